"""Worker for the two-rank test: `torchrun --nproc_per_node 2 torchrun_generate.py REGISTRY_ROOT OUT_DIR`."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation_fixtures import set_threads, stand_in_writer, use_registry  # noqa: E402


def main() -> None:
    set_threads()
    root, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    use_registry(root)
    import pandas as pd

    from generatect_kedro.pipelines.generation.nodes import generate_volumes

    table = pd.DataFrame({"prompt": ["65 years old male: Cardiomegaly.", "58 years old female: Pleural effusion."],
                          "seed": [10, None], "count": [2, 1], "slice_count": [5, 3]})
    params = {"device": "cpu", "seed": 100, "output_dir": str(out_dir), "progress": False, "preview": False,
              "text_encoder": {"device": "cpu"}, "geometry": {"spacing_mm": [0.7, 0.8, 2.0]},
              "sampler": {"batch_size": 2}}
    generate_volumes(table, pd.DataFrame(), params, writer=stand_in_writer, project_path=Path.cwd())


if __name__ == "__main__":
    main()
