"""Batch generation: item expansion, resume, interrupted items, MLflow run, two torchrun ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

GEN_DIR = Path(__file__).resolve().parents[1] / "pipelines" / "generation"
sys.path.insert(0, str(GEN_DIR))
from generation_fixtures import register_tiny_models, stand_in_writer, use_registry  # noqa: E402

from generatect_kedro.generation.batch import BatchSettings, expand_prompts, generate_batch  # noqa: E402
from generatect_kedro.generation.geometry import geometry_from_params  # noqa: E402
from generatect_kedro.generation.models import GenerationError, ModelRequest, load_models  # noqa: E402
from generatect_kedro.generation.sampler import SamplerSettings, VolumeSampler  # noqa: E402

# the table torchrun_generate.py uses
TABLE = pd.DataFrame({"prompt": ["65 years old male: Cardiomegaly.", "58 years old female: Pleural effusion."],
                      "seed": [10, None], "count": [2, 1], "slice_count": [5, 3]})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import mlflow

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("registry")
    previous = mlflow.get_tracking_uri()
    uri = use_registry(root)
    register_tiny_models(root)
    models = load_models(ModelRequest(), text_encoder={"device": "cpu"})
    sampler = VolumeSampler(models, SamplerSettings.from_params({"batch_size": 2}, models),
                            geometry_from_params({"spacing_mm": [0.7, 0.8, 2.0]}))
    try:
        yield sampler, root, uri
    finally:
        mlflow.set_tracking_uri(previous)


def items():
    return expand_prompts(TABLE, default_slice_count=5, base_seed=100)


def voxels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.glob("*.nii.gz"))}


def test_expand_prompts_ids_and_seeds():
    got = items()
    assert [(i.row, i.index_in_row, i.seed, i.slice_count) for i in got] == [(0, 0, 10, 5), (0, 1, 11, 5),
                                                                            (1, 0, 101, 3)]
    assert all(i.item_id.startswith(f"gen-{i.row:04d}-{i.index_in_row:03d}-") for i in got)
    assert not any("Cardio" in i.item_id or "years" in i.item_id for i in got)
    assert [i.item_id for i in got] == [i.item_id for i in items()]  # deterministic
    with pytest.raises(GenerationError, match="empty prompt"):
        expand_prompts(pd.DataFrame({"prompt": ["ok", " "]}), default_slice_count=5)
    with pytest.raises(GenerationError, match="`prompt` column"):
        expand_prompts(pd.DataFrame({"text": ["x"]}), default_slice_count=5)


def test_batch_resume_interrupt_and_mlflow(setup, tmp_path):
    import mlflow

    sampler, _, _ = setup
    out = tmp_path / "out"
    settings = BatchSettings(out_dir=out, experiment="generation-batch-test", progress=False, preview=False)
    summary, table = generate_batch(sampler, items(), settings, writer=stand_in_writer)
    assert summary["generated"] == 3 and summary["skipped"] == 0 and list(table["status"]) == ["generated"] * 3
    run = mlflow.get_run(summary["generation_run_id"])
    assert run.data.metrics["generation/volumes_generated"] == 3
    assert run.data.metrics["generation/seconds_per_volume"] > 0
    stages = summary["stage_seconds_per_volume"]  # where the time goes, per volume
    assert set(stages) == {"text", "tokens", "decode", "superres"} and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= summary["seconds_per_volume"] * 1.05
    assert run.data.metrics["generation/seconds_per_volume/superres"] == stages["superres"]
    assert run.data.params["generation/transformer_version"] == "1"
    assert mlflow.active_run() is None  # its own run, closed
    logged = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/generation/items.csv")
    assert "Cardio" not in logged and "gen-0000-000-" in logged  # ids and hashes, never the prompt
    first = table["item_id"][0]
    sidecar = json.loads((out / f"{first}.json").read_text())
    assert sidecar["schema"] == "generatect-lineage/1" and sidecar["generation_run_id"] == run.info.run_id
    assert sidecar["item"] == {"item_id": first, "row": 0, "index_in_row": 0, "prompt": TABLE["prompt"][0],
                               "seed": 10, "slice_count": 5}
    assert set(sidecar["models"]) == {"ctvit", "transformer", "superres"}
    assert {"name", "version", "requested", "run_id", "training_run_id", "weights_sha256", "model_uri"} <= set(
        sidecar["models"]["transformer"])
    assert sidecar["sampler"]["superres"][0]["sampler"] == "dpm++2m"
    assert sidecar["geometry"]["source"] == "parameters" and sidecar["text_encoder"]["path"] == "demo:minilm"
    assert {"package_version", "git_commit", "git_dirty"} <= set(sidecar["code"])
    assert "dvc_lock_sha256" in sidecar["data"]
    assert sidecar["data"]["training"]["transformer"]["dvc_lock_sha256"] == "d" * 64
    before = voxels(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # resume: nothing to do, nothing touched
    summary, table = generate_batch(sampler, items(), settings, writer=stand_in_writer)
    assert summary["generated"] == 0 and summary["skipped"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # an item killed after its NIfTI (and leaving an atomic writer's temp file) is redone; the others are not
    last = table["item_id"][2]
    (out / f"{last}.json").unlink()
    (out / f".{last}.nii.gz.tmp-dead.nii.gz").write_bytes(b"half")

    def dies_before_sidecar(volume, record, out_dir, stem, **kwargs):
        raise KeyboardInterrupt  # as if killed between the NIfTI and the sidecar

    with pytest.raises(KeyboardInterrupt):
        generate_batch(sampler, items(), settings, writer=dies_before_sidecar)
    assert not (out / f"{last}.json").exists()
    assert mlflow.active_run() is None
    summary, table = generate_batch(sampler, items(), settings, writer=stand_in_writer)
    assert summary["generated"] == 1 and list(table["status"]) == ["skipped", "skipped", "generated"]
    assert not list(out.glob(".*tmp-*"))
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {k: v for k, v in after.items() if last not in k} == {k: v for k, v in mtimes.items() if last not in k}
    assert all(np.array_equal(before[k], v) for k, v in voxels(out).items())

    # inside an active run (kedro-mlflow's): logs into it, does not open another
    with mlflow.start_run() as active:
        summary, _ = generate_batch(sampler, items(), settings, writer=stand_in_writer)
        assert summary["generation_run_id"] == active.info.run_id and mlflow.active_run() is not None


def test_two_torchrun_ranks_match_one_process(setup, tmp_path):
    sampler, root, _ = setup
    single = tmp_path / "single"
    summary, _ = generate_batch(sampler, items(), BatchSettings(out_dir=single, progress=False, track=False),
                                writer=stand_in_writer)
    assert summary["generated"] == 3
    ranks = tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2",
                           str(GEN_DIR / "torchrun_generate.py"), str(root), str(ranks)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in ranks.glob("*.json")) == sorted(p.name for p in single.glob("*.json"))
    ours, theirs = voxels(single), voxels(ranks)
    assert ours.keys() == theirs.keys() and len(ours) == 3
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    records = [json.loads(p.read_text()) for p in ranks.glob("*.json")]
    run_ids = {r["generation_run_id"] for r in records}
    assert len(run_ids) == 1 and None not in run_ids  # rank 1's items carry rank 0's run id
    assert not list(ranks.glob(".generation-*"))  # handshake files cleaned up
