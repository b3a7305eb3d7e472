"""`generatect-generator`: the whole generation path as one registered pyfunc, served by `mlflow models serve`.

Tiny components in a temporary SQLite registry (tests/pipelines/generation/generation_fixtures.py); the
generator is registered over them and given @champion directly (promotion has its own tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent / "pipelines" / "generation"))
from generation_fixtures import register_tiny_models, use_registry  # noqa: E402

from generatect_kedro.commands.generate import generate  # noqa: E402
from generatect_kedro.commands.register_generator import register_generator as register_generator_command  # noqa: E402
from generatect_kedro.serving import GENERATOR, decode_volume, register_generator, register_generator_node  # noqa: E402

CONF = Path(__file__).resolve().parents[1] / "conf"
PROMPT = "65 years old male: Cardiomegaly."
SPACING = [0.7, 0.8, 2.0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(project root, component infos, generator info, {seed: (int16 ijk array, sidecar)} from the CLI)."""
    import mlflow

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    previous = mlflow.get_tracking_uri()
    try:
        uri = use_registry(root)
        infos = register_tiny_models(root)
        (root / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "generatect_kedro"\n')
        (root / "conf" / "base").mkdir(parents=True)
        (root / "conf" / "local").mkdir()
        shutil.copy(CONF / "base" / "parameters_generation.yml", root / "conf" / "base")
        (root / "conf" / "base" / "mlflow.yml").write_text(yaml.safe_dump({"server": {"mlflow_tracking_uri": uri}}))
        (root / "conf" / "local" / "parameters_generation.yml").write_text(
            f"generation:\n  geometry:\n    spacing_mm: {SPACING}\n  progress: false\n")
        generator = register_generator(geometry={"spacing_mm": SPACING}, device="cpu")
        mlflow.MlflowClient().set_registered_model_alias(GENERATOR, "champion", generator["version"])
        cli = {}
        for seed in (7, 8):
            out = root / f"cli-{seed}"
            result = CliRunner().invoke(generate, [PROMPT, "--seed", str(seed), "--out", str(out), "--no-preview",
                                                   "--device", "cpu", "--project-dir", str(root)])
            assert result.exit_code == 0, result.output + repr(result.exception)
            mlflow.set_tracking_uri(uri)  # the CLI pointed MLflow at the project's URI; keep it explicit
            (sidecar,) = out.glob("gen-*.json")
            import nibabel as nib

            record = json.loads(sidecar.read_text())
            data = np.asarray(nib.load(str(out / record["volume"]["nifti"])).dataobj).astype(np.int16)
            cli[seed] = (data, record)
        yield root, uri, infos, generator, cli
    finally:
        mlflow.set_tracking_uri(previous)


def test_registration_pins_versions_and_is_idempotent(served):
    import mlflow

    root, uri, infos, generator, _ = served
    mlflow.set_tracking_uri(uri)
    version = mlflow.MlflowClient().get_model_version(GENERATOR, generator["version"])
    for role, model in (("ctvit", "generatect-ctvit"), ("transformer", "generatect-transformer"),
                        ("superres", "generatect-superres")):
        pinned = {"name": model, "version": infos[role]["version"], "weights_sha256": infos[role]["weights_sha256"]}
        assert generator["config"]["components"][role] == pinned
        assert version.tags[f"component.{role}"] == f"{model}/{infos[role]['version']}"
    assert generator["config"]["kind"] == "generator" and generator["alias"] == "challenger"
    assert generator["config"]["geometry"]["spacing_mm"] == SPACING
    assert generator["config"]["sampler"]["transformer"]["steps"] == 3  # the registered (effective) settings
    again = register_generator(geometry={"spacing_mm": SPACING}, device="cpu", alias="challenger")
    assert again["reused"] and again["version"] == generator["version"]


def test_pyfunc_equals_cli_and_records_lineage(served):
    import mlflow

    root, uri, infos, generator, cli = served
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{GENERATOR}@champion")
    rows = model.predict([{"prompt": PROMPT, "seed": 7}, {"prompt": "  " + PROMPT, "seed": 8},
                          {"prompt": PROMPT, "seed": 7, "sampler": {"transformer": {"steps": 2}}}])
    for seed, row in ((7, rows[0]), (8, rows[1])):
        data, record = cli[seed]
        volume = decode_volume(row)
        assert volume.shape == data.shape and volume.tobytes() == data.tobytes()  # byte-equal int16 voxels
        assert row["voxel_sha256"] == record["volume"]["voxel_sha256"]
        assert row["shape_dhw"] == record["volume"]["shape_dhw"] and row["spacing_mm"] == pytest.approx(SPACING)
        lineage = row["lineage"]
        assert lineage["schema"] == "generatect-lineage/1"
        for key in ("prompt", "seed", "slice_count"):  # the prompt normalised like the CLI's; row = request row
            assert lineage["item"][key] == record["item"][key], key
        for key in ("sampler", "text_encoder", "geometry", "hu_window"):
            assert lineage[key] == record[key], key
        for role, model in record["models"].items():  # the CLI asked for @champion, the generator for its pin
            assert {**lineage["models"][role], "requested": model["requested"]} == model
            assert lineage["models"][role]["requested"] == generator["components"][role]["version"]
        assert lineage["volume"]["voxel_sha256"] == record["volume"]["voxel_sha256"]
        assert lineage["served_by"]["components"] == generator["components"]
    assert rows[2]["lineage"]["sampler"]["transformer"]["steps"] == 2
    assert rows[2]["voxel_sha256"] != rows[0]["voxel_sha256"]


def test_tampered_pin_is_refused(served):
    import mlflow

    from generatect_kedro.registry import RegistryError
    from generatect_kedro.serving import GeneratorService

    _, uri, _, generator, _ = served
    mlflow.set_tracking_uri(uri)
    config = json.loads(json.dumps(generator["config"]))
    config["components"]["superres"]["weights_sha256"] = "0" * 64
    with pytest.raises(RegistryError, match="pinned"):
        GeneratorService(config)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_mlflow_models_serve(served, tmp_path):
    """`mlflow models serve -m models:/generatect-generator@champion --env-manager local` answers /invocations."""
    root, uri, infos, generator, cli = served
    port = _free_port()
    bin_dir = Path(sys.executable).parent  # the server execs `uvicorn` by name: the venv's bin must be on PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "GENERATECT_DEVICE": "cpu",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_REGISTRY_URI", None)
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{GENERATOR}@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"no /ping answer within 120 s:\n{log.read()[-3000:]}")
            time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"prompt": PROMPT, "seed": 7}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = json.loads(reply.read())["predictions"]
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # the server's own session: mlflow and the uvicorn it exec'd
            server.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.wait(timeout=15)
        log.close()
    (row,) = predictions
    data, record = cli[7]
    assert decode_volume(row).tobytes() == data.tobytes() and decode_volume(row).shape == data.shape
    models = row["lineage"]["models"]
    for role in ("ctvit", "transformer", "superres"):
        assert models[role]["version"] == infos[role]["version"]
        assert models[role]["weights_sha256"] == generator["components"][role]["weights_sha256"]
    assert row["lineage"]["item"]["seed"] == 7 and row["lineage"]["item"]["prompt"] == PROMPT


def test_register_generator_command_and_node(served):
    import mlflow

    root, uri, infos, generator, _ = served
    result = CliRunner().invoke(register_generator_command, ["--transformer", "champion", "--alias", "challenger",
                                                             "--project-dir", str(root)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "generatect-generator version" in result.output
    assert f"generatect-transformer/{infos['transformer']['version']}" in result.output
    mlflow.set_tracking_uri(uri)
    params = {"models": {"ctvit": None, "transformer": infos["transformer"]["version"],
                         "superres": infos["superres"]["version"]},
              "geometry": {"spacing_mm": SPACING}, "sampler": {"transformer": {"steps": 2}},
              "device": "cpu", "serving": {"alias": "candidate"}}
    info = register_generator_node({"generated_at": "2026-11-25T00:00:00+00:00"}, params)
    assert info["alias"] == "candidate" and info["config"]["sampler"]["transformer"]["steps"] == 2
    assert {role: pin["version"] for role, pin in info["components"].items()} == {
        role: infos[role]["version"] for role in ("ctvit", "transformer", "superres")}
    json.dumps(info)  # a JSON dataset can save it
    # Promoted like the others: its gate (conf promotion.gates) needs every pinned component to be @champion now.
    import mlflow

    from generatect_kedro.pipelines.promotion.nodes import promote_generator

    gates = {"generatect-generator": [{"metric": "registry/components_champion", "op": ">=", "threshold": 1.0}]}
    passed = promote_generator(info, {"gates": gates, "reason": "test", "dry_run": True})["models"][GENERATOR]
    assert passed["status"] == "dry-run" and passed["gates"][0]["value"] == 1.0, passed
    mlflow.MlflowClient().set_model_version_tag(GENERATOR, info["version"], "component.superres",
                                                "generatect-superres/999")  # a pin that is no champion
    refused = promote_generator(info, {"gates": gates, "reason": "test"})["models"][GENERATOR]
    assert refused["status"] == "refused" and refused["gates"][0]["value"] == pytest.approx(2 / 3), refused
    missing = register_generator_node({}, {**params, "models": {"transformer": "no-such-alias"}})
    assert "no-such-alias" in missing["skipped"]  # nothing to serve yet: reported, the run goes on
    bad = CliRunner().invoke(register_generator_command, ["--transformer", "99", "--project-dir", str(root)])
    assert bad.exit_code == 1 and "has no version 99" in bad.output and "Traceback" not in bad.output


def test_pins_from_before_the_thresholding_and_compile_keys_still_merge():
    """A generator registered before the sampler record had these keys keeps working: absent keys fall back to
    the registered cascade (via SamplerSettings), request overrides still apply, unknown keys are refused."""
    from generatect_kedro.generation.models import GenerationError
    from generatect_kedro.serving import _merge_sampler

    old_pin = {"transformer": {"steps": 3}, "batch_size": 4, "slice_batch_size": 8, "precision": "fp32",
               "superres": [{"stage": 1, "sampler": "dpm++2m", "steps": 2, "cond_scale": 1.0,
                             "lowres_noise_level": 0.1}]}
    merged = _merge_sampler(old_pin, {"superres": {"sampler": "dpm++2m-sde", "dynamic_thresholding": False},
                                      "compile": False})
    assert merged["superres"] == [{"sampler": "dpm++2m-sde", "steps": 2, "cond_scale": 1.0, "lowres_noise_level": 0.1,
                                   "dynamic_thresholding": False}]
    assert merged["compile"] is False and _merge_sampler(old_pin, None)["compile"] is False
    with pytest.raises(GenerationError, match="unknown key"):
        _merge_sampler(old_pin, {"compiled": True})
