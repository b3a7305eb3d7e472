"""The super-resolution training node run twice in one process, with the `single` backend and with DeepSpeed
(ZeRO-2, the shipped conf/demo/deepspeed.yml, zero-compile recipe) on the same data, seed and batches.

Run by `test_superres_deepspeed.py` with the torch.distributed variables of a one-process world set. Writes
`<out>/summary.json` (the logged losses of every step of both stages, per backend) and each run's weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

import superres_fixtures as fx
from generatect_kedro.pipelines.superres import nodes

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def train(backend: str, out: Path) -> dict:
    low, full = fx.grids()
    weights, version = fx.ctvit()
    embeddings, index = fx.prompts()
    params = fx.params(out / backend, backend=backend, max_steps=3, validate_every=0, checkpoint_dir=None,
                       checkpoint_every=0, deepspeed=str(PROJECT_ROOT / "conf/demo/deepspeed.yml"))
    recon, _ = nodes.prepare_superres_pairs(fx.loaders(low), fx.loaders(full), weights, version, fx.splits(), params)
    cascade, summary = nodes.train_superres(fx.loaders(recon), fx.loaders(full), embeddings, index, fx.splits(),
                                            params)
    save_file(cascade, str(out / f"{backend}.safetensors"))
    return {"losses": [[loss for _, loss in stage["history"]] for stage in summary["stages"]],
            "backends": [stage["backend"] for stage in summary["stages"]]}


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    summary = {backend: train(backend, out) for backend in ("single", "deepspeed")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
