"""Promote a registered version to ``@champion`` through evaluation gates, and roll back.

Every change is recorded as model-version tags (who, when, why, previous champion, gate results) and as
one run per action in the MLflow experiment ``generatect-promotion`` (the readable history). Under an
inter-process lock the record tags are written first and the alias moved last; any failure restores the
previous tags and alias, so two concurrent promotions never leave a half-written record.
"""

from __future__ import annotations

import getpass
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from generatect_kedro.promotion.gates import Gate, GateResult, MetricLookup, evaluate_gates, format_table, parse_gates
from generatect_kedro.promotion.lock import lock_path, promotion_lock

__all__ = ["HISTORY_EXPERIMENT", "PromotionError", "PromotionResult", "model_name", "promote",
           "promotion_history", "rollback"]

LOG = logging.getLogger(__name__)
CHAMPION = "champion"  # registry.CHAMPION; not imported from there, which imports torch (slow for a CLI)
HISTORY_EXPERIMENT = "generatect-promotion"
MODEL_NAMES = {"ctvit": "generatect-ctvit", "transformer": "generatect-transformer",
               "superres": "generatect-superres"}
# Tags on the champion (``champion.*``) and on the version it replaced (``demoted.*``).
CHAMPION_TAGS = ("champion.action", "champion.promoted_by", "champion.promoted_at", "champion.reason",
                 "champion.previous_version", "champion.gates", "champion.history_run_id", "champion.sequence",
                 "champion.rolled_back_from")
DEMOTED_TAGS = ("demoted.action", "demoted.by", "demoted.at", "demoted.reason", "demoted.for_version")
SEQUENCE_TAG = "promotion.sequence"  # on the registered model: number of recorded actions
_MAX_TAG = 5000


class PromotionError(RuntimeError):
    """A promotion or rollback that cannot happen (no reason given, nothing to roll back to, …)."""


def model_name(model: str) -> str:
    """``ctvit`` → ``generatect-ctvit``; full registered names pass through."""
    return MODEL_NAMES.get(model, model)


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion or rollback did. ``status``: promoted, refused, noop, dry-run or rolled-back."""

    model: str
    version: str
    status: str
    previous_champion: str | None
    message: str
    gates: tuple[GateResult, ...] = ()
    actor: str | None = None
    reason: str | None = None
    at: str | None = None
    history_run_id: str | None = None
    failures: tuple[str, ...] = field(default=())

    @property
    def promoted(self) -> bool:
        return self.status in ("promoted", "rolled-back")

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def table(self) -> str:
        return format_table(self.gates) if self.gates else "(no gates)"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "status": self.status, "promoted": self.promoted,
                "previous_champion": self.previous_champion, "message": self.message,
                "gates": [g.to_dict() for g in self.gates], "failures": list(self.failures),
                "actor": self.actor, "reason": self.reason, "at": self.at, "history_run_id": self.history_run_id}


def _mlflow():
    import mlflow

    return mlflow


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _champion(client: Any, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except Exception:  # no alias (MlflowException)
        return None


def _version(client: Any, name: str, version: str | int) -> Any:
    try:
        return client.get_model_version(name, str(version))
    except Exception:  # let the registry explain (which versions/aliases exist, how to make one)
        from generatect_kedro.registry import resolve

        ref = resolve(name, str(version))  # raises RegistryError with a hint
        return client.get_model_version(name, ref.version)


def _failure_text(result: GateResult) -> str:
    if result.missing:
        return f"{result.metric}: {result.missing}"
    label = f"{result.metric} - {result.baseline}" if result.baseline else result.metric
    return f"{label} = {result.value:.4g}, needs {result.op} {result.threshold:g}"


class _Transaction:
    """Tag and alias writes that can be undone: each key's old value is remembered on first write."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name
        self._tags: dict[tuple[str, str], str | None] = {}
        self._current: dict[str, dict[str, str]] = {}
        self._alias: tuple[bool, str | None] | None = None

    def set_tag(self, version: str, key: str, value: Any) -> None:
        self._remember(version, key)
        self.client.set_model_version_tag(self.name, version, key, str(value)[:_MAX_TAG])

    def delete_tag(self, version: str, key: str) -> None:
        if self._remember(version, key) is not None:
            self.client.delete_model_version_tag(self.name, version, key)

    def _remember(self, version: str, key: str) -> str | None:
        if version not in self._current:
            self._current[version] = dict(self.client.get_model_version(self.name, version).tags or {})
        if (version, key) not in self._tags:
            self._tags[(version, key)] = self._current[version].get(key)
        return self._tags[(version, key)]

    def move_champion(self, version: str, previous: str | None) -> None:
        self._alias = (True, previous)
        self.client.set_registered_model_alias(self.name, CHAMPION, version)

    def undo(self) -> None:
        for (version, key), old in reversed(list(self._tags.items())):
            try:
                if old is None:
                    self.client.delete_model_version_tag(self.name, version, key)
                else:
                    self.client.set_model_version_tag(self.name, version, key, old)
            except Exception as error:  # keep undoing the rest
                LOG.error("could not restore tag %s on %s v%s: %s", key, self.name, version, error)
        if self._alias is not None:
            previous = self._alias[1]
            if previous is None:
                self.client.delete_registered_model_alias(self.name, CHAMPION)
            else:
                self.client.set_registered_model_alias(self.name, CHAMPION, previous)


def _start_history_run(client: Any, record: Mapping[str, Any], gates: Sequence[GateResult]) -> str:
    """One run per action in ``generatect-promotion`` (params + the gate table as artifacts)."""
    from generatect_kedro.training.tracking import ensure_experiment  # lazily: the package imports torch

    run = client.create_run(ensure_experiment(HISTORY_EXPERIMENT), run_name=f"{record['action']}-{record['model']}-"
                            f"v{record['version']}", tags={"model": record["model"], "action": record["action"]})
    run_id = run.info.run_id
    from mlflow.entities import Param

    keys = ("model", "version", "previous", "actor", "reason", "action", "sequence")
    client.log_batch(run_id, params=[Param(key, str("none" if record.get(key) is None else record[key])[:6000])
                                     for key in keys])
    client.log_dict(run_id, {**record, "gates": [g.to_dict() for g in gates]}, "promotion/record.json")
    client.log_text(run_id, format_table(gates) + "\n" if gates else "(no gates)\n", "promotion/gates.txt")
    return run_id


def _sequence(client: Any, name: str) -> int:
    tags = client.get_registered_model(name).tags or {}
    return int(tags.get(SEQUENCE_TAG, 0)) + 1


def _commit(client: Any, name: str, version: str, previous: str | None, record: dict[str, Any],
            gates: Sequence[GateResult], rolled_back_from: str | None = None) -> str:
    """Write the record tags, the history run, then the alias; undo everything on any failure."""
    tx = _Transaction(client, name)
    run_id = None
    try:
        record["sequence"] = _sequence(client, name)
        run_id = _start_history_run(client, record, gates)
        tags = {"champion.action": record["action"], "champion.promoted_by": record["actor"],
                "champion.promoted_at": record["at"], "champion.reason": record["reason"],
                "champion.history_run_id": run_id, "champion.sequence": record["sequence"]}
        if record["action"] == "promote":
            tags["champion.previous_version"] = previous or "none"
            # compact (the full table, descriptions included, is the history run's promotion/record.json)
            tags["champion.gates"] = json.dumps([{k: v for k, v in g.to_dict().items() if k not in
                                                  ("description", "missing")} for g in gates], default=str)
            tx.delete_tag(version, "champion.rolled_back_from")
        else:  # a rollback keeps the restored version's own previous champion: a second rollback goes further
            tags["champion.rolled_back_from"] = rolled_back_from
        for key, value in tags.items():
            tx.set_tag(version, key, value)
        for key in DEMOTED_TAGS:
            tx.delete_tag(version, key)
        if previous is not None:
            for key, value in {"demoted.action": record["action"], "demoted.by": record["actor"],
                               "demoted.at": record["at"], "demoted.reason": record["reason"],
                               "demoted.for_version": version}.items():
                tx.set_tag(previous, key, value)
        old_sequence = (client.get_registered_model(name).tags or {}).get(SEQUENCE_TAG)
        client.set_registered_model_tag(name, SEQUENCE_TAG, str(record["sequence"]))
        try:
            tx.move_champion(version, previous)  # last: the alias is the commit point
        except Exception:
            if old_sequence is None:
                client.delete_registered_model_tag(name, SEQUENCE_TAG)
            else:
                client.set_registered_model_tag(name, SEQUENCE_TAG, old_sequence)
            raise
        client.set_terminated(run_id, "FINISHED")
        return run_id
    except BaseException:
        tx.undo()
        if run_id is not None:
            try:
                client.set_tag(run_id, "rolled_back", "true (the action failed and was undone)")
                client.set_terminated(run_id, "FAILED")
            except Exception:
                pass
        raise


def _registry_uri() -> str:
    return _mlflow().get_registry_uri()


def promote(model: str, version: str | int, *, gates: Iterable[Gate | Mapping[str, Any]] | Mapping[str, Any],
            reason: str | None, actor: str | None = None, dry_run: bool = False,
            lock_dir: str | Path | None = None, lock_timeout_s: float = 120.0) -> PromotionResult:
    """Move ``@champion`` to ``version`` when every gate passes; else refuse, listing every failure.

    ``gates``: this model's gates (``Gate`` or config entries), or the whole gates config keyed by model.
    """
    name = model_name(model)
    if isinstance(gates, Mapping):
        gates = gates.get(name, gates.get(model, [])) or []
    gate_list = [g if isinstance(g, Gate) else parse_gates([g], name)[0] for g in gates]
    if not dry_run and not (reason or "").strip():
        raise PromotionError(f"promoting {name} v{version}: a reason is required (why this version?)")
    actor = actor or getpass.getuser()
    client = _mlflow().MlflowClient()
    target = _version(client, name, version)
    number = str(target.version)
    champion = _champion(client, name)
    if champion == number:
        return PromotionResult(name, number, "noop", champion, f"{name} v{number} is already @{CHAMPION}; "
                               "nothing to do", actor=actor, reason=reason)
    results = tuple(evaluate_gates(gate_list, MetricLookup(client, name, target)))
    failures = tuple(_failure_text(r) for r in results if not r.passed)
    if not gate_list:
        failures = (f"no gates configured for {name}: refusing to promote unchecked",)
    if failures:
        message = (f"refused to promote {name} v{number} to @{CHAMPION}: {len(failures)} of {len(results)} gate(s) "
                   "failed:\n  - " + "\n  - ".join(failures))
        return PromotionResult(name, number, "refused", champion, message, results, actor, reason, failures=failures)
    if dry_run:
        return PromotionResult(name, number, "dry-run", champion, f"{name} v{number} passes all {len(results)} "
                               f"gate(s); dry run: @{CHAMPION} not moved (now {champion or 'none'})", results,
                               actor, reason)
    with promotion_lock(lock_path(_registry_uri(), name, lock_dir), lock_timeout_s):
        previous = _champion(client, name)  # re-read under the lock: another process may have moved it
        if previous == number:
            return PromotionResult(name, number, "noop", previous, f"{name} v{number} is already @{CHAMPION}; "
                                   "nothing to do", results, actor, reason)
        record = {"action": "promote", "model": name, "version": number, "previous": previous, "actor": actor,
                  "reason": reason.strip(), "at": _now()}
        run_id = _commit(client, name, number, previous, record, results)
    LOG.info("promoted %s v%s to @%s (previous: %s) by %s: %s", name, number, CHAMPION, previous or "none", actor,
             reason)
    return PromotionResult(name, number, "promoted", previous, f"promoted {name} v{number} to @{CHAMPION} "
                           f"(previous champion: {'v' + previous if previous else 'none'})", results, actor,
                           record["reason"], record["at"], run_id)


def rollback(model: str, *, reason: str | None, actor: str | None = None, lock_dir: str | Path | None = None,
             lock_timeout_s: float = 120.0) -> PromotionResult:
    """Give ``@champion`` back to the previous champion recorded on the current one."""
    name = model_name(model)
    if not (reason or "").strip():
        raise PromotionError(f"rolling back {name}: a reason is required (what is wrong with the champion?)")
    actor = actor or getpass.getuser()
    client = _mlflow().MlflowClient()
    with promotion_lock(lock_path(_registry_uri(), name, lock_dir), lock_timeout_s):
        current = _champion(client, name)
        if current is None:
            raise PromotionError(f"{name} has no @{CHAMPION}: nothing to roll back")
        tags = client.get_model_version(name, current).tags or {}
        previous = tags.get("champion.previous_version")
        if not previous or previous == "none":
            raise PromotionError(f"{name} @{CHAMPION} (v{current}) records no previous champion "
                                 "(tag champion.previous_version): nothing to roll back to")
        try:
            client.get_model_version(name, previous)
        except Exception as error:
            from generatect_kedro.registry import RegistryError

            raise RegistryError(f"{name} v{previous}, the previous champion recorded on v{current}, no longer "
                                "exists") from error
        record = {"action": "rollback", "model": name, "version": previous, "previous": current, "actor": actor,
                  "reason": reason.strip(), "at": _now()}
        run_id = _commit(client, name, previous, current, record, (), rolled_back_from=current)
    LOG.info("rolled %s @%s back from v%s to v%s by %s: %s", name, CHAMPION, current, previous, actor, reason)
    return PromotionResult(name, previous, "rolled-back", current, f"rolled {name} @{CHAMPION} back from "
                           f"v{current} to v{previous}", (), actor, record["reason"], record["at"], run_id)


def promotion_history(model: str) -> list[dict[str, Any]]:
    """Recorded promotions and rollbacks of a model, oldest first (finished history runs only)."""
    name = model_name(model)
    client = _mlflow().MlflowClient()
    experiment = client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.model = '{name}'",
                              max_results=10000)
    rows = [{**run.data.params, "run_id": run.info.run_id, "status": run.info.status} for run in runs
            if run.info.status == "FINISHED"]
    return sorted(rows, key=lambda row: int(row.get("sequence", 0)))
