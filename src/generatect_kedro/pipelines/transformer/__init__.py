"""MaskGIT transformer stage pipeline (embed prompts, train, register, conditioning report).

Importing it teaches the registry the ``maskgit`` model kind, so `registry.load_module` rebuilds a MaskGIT
(with its token critic as ``.critic`` when one was trained).
"""

from generatect_kedro import registry
from generatect_kedro.pipelines.transformer.pipeline import create_pipeline
from generatect_kedro.pipelines.transformer.task import build_maskgit

registry.register_builder("maskgit", build_maskgit)

__all__ = ["build_maskgit", "create_pipeline"]
