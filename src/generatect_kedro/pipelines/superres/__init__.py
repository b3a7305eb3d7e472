"""Super-resolution stage pipeline (stage-1 inputs, cascade training, evaluation, registration).

Importing it teaches the registry the ``superres_cascade`` model kind, so `registry.load_module` rebuilds the
`diffusion.Cascade` (one U-Net per stage, EMA weights) of a registered ``generatect-superres`` version.
"""

from generatect_kedro import registry
from generatect_kedro.pipelines.superres.pipeline import create_pipeline
from generatect_kedro.pipelines.superres.task import CASCADE_KIND, build_cascade

registry.register_builder(CASCADE_KIND, build_cascade)

__all__ = ["build_cascade", "create_pipeline"]
