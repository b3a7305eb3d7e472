"""Promotion through gates against a temporary SQLite MLflow: gates, records, rollback, no-op, the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import save_file

from generatect_kedro import registry
from generatect_kedro.promotion import (
    Gate,
    PromotionError,
    lock_path,
    parse_gates,
    promote,
    promotion_history,
    rollback,
)
from generatect_kedro.promotion import core
from mlflow_helpers import temporary_mlflow

GATES = [
    {"metric": "ctvit/val/psnr_gain_db", "op": ">=", "threshold": 3.0, "description": "beats the mean volume"},
    {"metric": "ctvit/val/ssim_hu", "op": ">", "threshold": 0.5, "description": "structure"},
]
GOOD = {"ctvit/val/psnr_gain_db": 6.0, "ctvit/val/ssim_hu": 0.8}


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory):
    """One SQLite tracking/registry database for the module; the previous URIs are restored."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with temporary_mlflow(uri):
        experiment = mlflow.create_experiment("promotion-test", artifact_location=(root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment)
        weights = root / "w.safetensors"
        save_file({"w": torch.zeros(4)}, str(weights))
        yield root, uri, weights


def register(db, name: str, metrics: dict[str, float], tags: dict[str, str] | None = None) -> str:
    """A version registered by `registry.register_model` from a run that logged ``metrics``."""
    import mlflow

    _, _, weights = db
    with mlflow.start_run():
        mlflow.log_metrics(metrics, step=1)
        info = registry.register_model(name, weights, {"kind": "test"}, tags or {}, reuse_identical=False)
    return info["version"]


def champion(name: str) -> str | None:
    return core._champion(core._mlflow().MlflowClient(), name)


def tags(name: str, version: str) -> dict[str, str]:
    return dict(core._mlflow().MlflowClient().get_model_version(name, version).tags)


def test_parse_gates_refuses_bad_entries():
    assert parse_gates(GATES)[0] == Gate("ctvit/val/psnr_gain_db", ">=", 3.0, "beats the mean volume")
    with pytest.raises(ValueError, match="op '=>'"):
        parse_gates([{"metric": "m", "op": "=>", "threshold": 1}])
    with pytest.raises(ValueError, match="need metric, op, threshold"):
        parse_gates([{"metric": "m", "op": ">", "treshold": 1}])


def test_promote_records_who_when_why_previous_and_demotion(mlflow_db):
    name = "t-promote"
    v1, v2 = register(mlflow_db, name, GOOD), register(mlflow_db, name, {**GOOD, "ctvit/val/ssim_hu": 0.9})
    first = promote(name, v1, gates=GATES, reason="first release", actor="alice")
    assert first.status == "promoted" and first.previous_champion is None and champion(name) == v1
    second = promote(name, v2, gates={name: GATES}, reason="better SSIM")  # the whole config, keyed by model
    assert second.promoted and champion(name) == v2 and second.previous_champion == v1
    t2, t1 = tags(name, v2), tags(name, v1)
    assert t2["champion.promoted_by"] == second.actor and second.actor  # the OS user by default
    assert t2["champion.reason"] == "better SSIM" and t2["champion.previous_version"] == v1
    assert t2["champion.promoted_at"].endswith("+00:00")  # UTC ISO
    gate_rows = json.loads(t2["champion.gates"])
    assert [(g["metric"], g["value"], g["passed"]) for g in gate_rows] == [
        ("ctvit/val/psnr_gain_db", 6.0, True), ("ctvit/val/ssim_hu", 0.9, True)]
    assert gate_rows[0]["source"].startswith("run ") and "training_run_id" in gate_rows[0]["source"]
    assert t1["demoted.for_version"] == v2 and t1["demoted.reason"] == "better SSIM"
    assert "demoted.by" not in t2
    history = promotion_history(name)
    assert [(h["version"], h["previous"], h["action"]) for h in history] == [(v1, "none", "promote"),
                                                                             (v2, v1, "promote")]


def test_failing_gates_refuse_listing_every_failure_and_leave_the_alias(mlflow_db):
    name = "t-refuse"
    good = register(mlflow_db, name, GOOD)
    bad = register(mlflow_db, name, {"ctvit/val/psnr_gain_db": 1.0, "ctvit/val/ssim_hu": 0.2})
    promote(name, good, gates=GATES, reason="baseline")
    result = promote(name, bad, gates=GATES, reason="try")
    assert result.status == "refused" and not result.promoted and champion(name) == good
    assert len(result.failures) == 2  # both gates, not just the first
    assert "ctvit/val/psnr_gain_db = 1, needs >= 3" in result.message and "ctvit/val/ssim_hu = 0.2" in result.message
    assert "NO" in result.table() and "champion.promoted_by" not in tags(name, bad)


def test_missing_metric_is_refused_naming_it_and_where_it_looked(mlflow_db):
    name = "t-missing"
    version = register(mlflow_db, name, {"ctvit/val/psnr_gain_db": 9.0})
    result = promote(name, version, gates=GATES, reason="x")
    assert result.status == "refused" and champion(name) is None
    (failure,) = result.failures
    assert "ctvit/val/ssim_hu" in failure and "metric.ctvit/val/ssim_hu" in failure and "training_run_id" in failure
    assert "MISSING" in result.table()
    no_gates = promote(name, version, gates=[], reason="x")
    assert no_gates.status == "refused" and "no gates configured" in no_gates.message


def test_metric_tag_overrides_the_run_metric_and_baseline_gates(mlflow_db):
    name = "t-tag"
    version = register(mlflow_db, name, {**GOOD, "sr/diffusion": 30.0, "sr/trilinear": 31.0})
    core._mlflow().MlflowClient().set_model_version_tag(name, version, "metric.ctvit/val/ssim_hu", "0.1")
    result = promote(name, version, gates=GATES, reason="x", dry_run=True)
    assert result.status == "refused" and result.gates[1].value == pytest.approx(0.1)
    assert result.gates[1].source == "version tag metric.ctvit/val/ssim_hu"
    gate = {"metric": "sr/diffusion", "baseline": "sr/trilinear", "op": ">=", "threshold": -2.0}
    passed = promote(name, version, gates=[gate], reason=None, dry_run=True)
    assert passed.status == "dry-run" and passed.gates[0].value == pytest.approx(-1.0) and champion(name) is None


def test_reason_is_required_and_repromoting_the_champion_is_a_noop(mlflow_db):
    name = "t-noop"
    version = register(mlflow_db, name, GOOD)
    with pytest.raises(PromotionError, match="reason is required"):
        promote(name, version, gates=GATES, reason="  ")
    promote(name, version, gates=GATES, reason="go")
    again = promote(name, version, gates=GATES, reason="again")
    assert again.status == "noop" and "already @champion" in again.message and len(promotion_history(name)) == 1
    with pytest.raises(registry.RegistryError, match="has no version 99"):
        promote(name, "99", gates=GATES, reason="x")


def test_rollback_restores_the_previous_champion_and_records_it(mlflow_db):
    name = "t-rollback"
    v1, v2, v3 = (register(mlflow_db, name, GOOD) for _ in range(3))
    with pytest.raises(PromotionError, match="no @champion"):
        rollback(name, reason="nothing yet")
    for v in (v1, v2, v3):
        promote(name, v, gates=GATES, reason=f"release {v}")
    result = rollback(name, reason="v3 hallucinates", actor="bob")
    assert result.status == "rolled-back" and champion(name) == v2 and result.previous_champion == v3
    assert tags(name, v3)["demoted.action"] == "rollback" and tags(name, v3)["demoted.by"] == "bob"
    restored = tags(name, v2)
    assert restored["champion.action"] == "rollback" and restored["champion.rolled_back_from"] == v3
    assert restored["champion.previous_version"] == v1 and "demoted.by" not in restored
    assert rollback(name, reason="v2 too").version == v1 and champion(name) == v1
    with pytest.raises(PromotionError, match="records no previous champion"):
        rollback(name, reason="and again")
    assert [h["action"] for h in promotion_history(name)] == ["promote"] * 3 + ["rollback"] * 2


def test_a_failing_alias_move_restores_every_tag(mlflow_db, monkeypatch):
    name = "t-undo"
    v1, v2 = register(mlflow_db, name, GOOD), register(mlflow_db, name, GOOD)
    promote(name, v1, gates=GATES, reason="first")
    before = (tags(name, v1), tags(name, v2))

    def broken(self, version, previous):  # noqa: ARG001
        raise RuntimeError("registry went away")

    monkeypatch.setattr(core._Transaction, "move_champion", broken)
    with pytest.raises(RuntimeError, match="went away"):
        promote(name, v2, gates=GATES, reason="second")
    assert champion(name) == v1 and (tags(name, v1), tags(name, v2)) == before
    assert len(promotion_history(name)) == 1  # the failed attempt's run is FAILED, not history


def test_lock_file_lies_beside_the_sqlite_database(tmp_path):
    assert lock_path(f"sqlite:///{tmp_path}/mlflow.db", "generatect-ctvit") == \
        tmp_path / "mlflow.db.promotion-generatect-ctvit.lock"
    assert lock_path("http://mlflow:5000", "m", lock_dir=tmp_path).parent == tmp_path


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import mlflow
    from generatect_kedro.promotion import core

    uri, name, version, folder = sys.argv[1:5]
    mlflow.set_tracking_uri(uri)
    move = core._Transaction.move_champion
    def slow_move(self, *args):  # widen the window between the record tags and the alias
        time.sleep(0.5)
        return move(self, *args)
    core._Transaction.move_champion = slow_move
    gates = [{"metric": "ctvit/val/psnr_gain_db", "op": ">=", "threshold": 3.0}]
    Path(folder, f"ready-{version}").touch()
    while not Path(folder, "go").exists():
        time.sleep(0.01)
    result = core.promote(name, version, gates=gates, reason=f"race {version}", actor=f"proc-{version}")
    print(result.status, result.previous_champion)
""")


def test_two_processes_promoting_at_once_leave_one_consistent_champion(mlflow_db, tmp_path):
    _, uri, _ = mlflow_db
    name = "t-race"
    a, b = register(mlflow_db, name, GOOD), register(mlflow_db, name, GOOD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, uri, name, v, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for v in (a, b)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{v}").exists() for v in (a, b)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    winner = champion(name)
    loser = b if winner == a else a
    assert winner in (a, b)
    assert tags(name, winner)["champion.previous_version"] == loser  # the later one saw the earlier one
    assert tags(name, loser)["champion.previous_version"] == "none"
    assert tags(name, loser)["demoted.for_version"] == winner and "demoted.by" not in tags(name, winner)
    history = promotion_history(name)
    assert [(h["version"], h["previous"]) for h in history] == [(loser, "none"), (winner, loser)]
