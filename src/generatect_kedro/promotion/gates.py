"""Evaluation gates: a registered version is promoted only when its logged evaluation metrics pass them.

Where a version's metric ``<key>`` comes from (one rule, in this order):

1. the model-version tag ``metric.<key>`` (numeric text), written by an evaluation stage onto the version;
2. the latest value of ``<key>`` among the metrics of the version's training run: the run named by the
   version's ``training_run_id`` tag, else the run that registered the version (``version.run_id``).

A whole ``kedro run`` is one MLflow run, so run metric keys carry the stage prefix (``ctvit/val/psnr_hu``).
A gate may name a ``baseline`` metric; then its value is ``metric - baseline`` (e.g. diffusion minus
trilinear), both looked up by the same rule.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Gate", "GateResult", "MetricLookup", "MetricValue", "evaluate_gates", "format_table", "parse_gates"]

METRIC_TAG_PREFIX = "metric."
# A metric computed from the registry at promotion time (not logged): see MetricLookup._components_champion.
REGISTRY_COMPONENTS_CHAMPION = "registry/components_champion"
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq,
}


@dataclass(frozen=True)
class Gate:
    """One condition ``value <op> threshold`` on a version's metric (``value = metric - baseline`` if set)."""

    metric: str
    op: str
    threshold: float
    description: str = ""
    baseline: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"gate on {self.metric!r}: op {self.op!r} is not one of {', '.join(OPS)}")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) \
                or not math.isfinite(self.threshold):
            raise ValueError(f"gate on {self.metric!r}: threshold {self.threshold!r} is not a finite number")

    @property
    def label(self) -> str:
        return f"{self.metric} - {self.baseline}" if self.baseline else self.metric


def parse_gates(entries: Iterable[Mapping[str, Any]] | None, model: str = "?") -> list[Gate]:
    """Gates from config entries ``{metric, op, threshold, description[, baseline]}``; unknown keys refused."""
    gates = []
    for i, entry in enumerate(entries or ()):
        entry = dict(entry)
        unknown = set(entry) - {"metric", "op", "threshold", "description", "baseline"}
        if unknown or "metric" not in entry or "op" not in entry or "threshold" not in entry:
            raise ValueError(f"gates of {model}, entry {i}: need metric, op, threshold (and optional "
                             f"description, baseline); got {sorted(entry)}")
        threshold = entry["threshold"]
        gates.append(Gate(metric=str(entry["metric"]), op=str(entry["op"]),
                          threshold=float(threshold) if isinstance(threshold, (int, float))
                          and not isinstance(threshold, bool) else threshold,
                          description=str(entry.get("description") or ""),
                          baseline=str(entry["baseline"]) if entry.get("baseline") else None))
    return gates


@dataclass(frozen=True)
class MetricValue:
    """A looked-up metric: its value (None when missing or not numeric) and where it came from / was sought."""

    key: str
    value: float | None
    source: str


class MetricLookup:
    """Resolves metric keys of one registered version by the module's rule; caches the run's metrics."""

    def __init__(self, client: Any, name: str, version: Any) -> None:
        self.client, self.name, self.version = client, name, version
        self._run: tuple[str | None, str, dict[str, float]] | None = None

    def _run_metrics(self) -> tuple[str | None, str, dict[str, float]]:
        if self._run is None:
            tags = dict(self.version.tags or {})
            candidates = [(tags.get("training_run_id"), "tag training_run_id"), (self.version.run_id, "version run_id")]
            self._run = (None, "no training run (no training_run_id tag, no run_id)", {})
            for run_id, how in candidates:
                if not run_id:
                    continue
                try:
                    run = self.client.get_run(run_id)
                except Exception:  # e.g. "none (trained outside an MLflow run)" or a deleted run
                    continue
                self._run = (run_id, how, dict(run.data.metrics))
                break
        return self._run

    def _components_champion(self) -> MetricValue:
        """Share of the version's pinned components (tags ``component.<role> = <name>/<version>``, as
        ``generatect-generator`` versions carry) that are their model's @champion right now: a generator
        is promoted only over components that passed their own gates."""
        key = REGISTRY_COMPONENTS_CHAMPION
        pins = {role: value for role, value in (self.version.tags or {}).items()
                if role.startswith("component.") and role.count(".") == 1 and "/" in str(value)}
        if not pins:
            return MetricValue(key, None, f"missing: {self.name} v{self.version.version} pins no components "
                                          "(no component.<role> tags)")
        current = 0
        for value in pins.values():
            name, _, version = str(value).rpartition("/")
            try:
                champion = self.client.get_model_version_by_alias(name, "champion")
            except Exception:  # no champion yet
                continue
            current += str(champion.version) == version
        return MetricValue(key, current / len(pins), f"registry now ({current} of {len(pins)} pinned components "
                                                     "are @champion)")

    def get(self, key: str) -> MetricValue:
        if key == REGISTRY_COMPONENTS_CHAMPION:
            return self._components_champion()
        tag = f"{METRIC_TAG_PREFIX}{key}"
        raw = (self.version.tags or {}).get(tag)
        where = f"{self.name} v{self.version.version}"
        if raw is not None:
            try:
                return MetricValue(key, float(raw), f"version tag {tag}")
            except ValueError:
                return MetricValue(key, None, f"version tag {tag} = {raw!r} is not a number")
        run_id, how, metrics = self._run_metrics()
        if key in metrics:
            return MetricValue(key, float(metrics[key]), f"run {run_id} ({how})")
        run = f"run {run_id} ({how})" if run_id else how
        return MetricValue(key, None, f"missing: no version tag {tag} on {where} and no metric {key!r} in {run}")


@dataclass(frozen=True)
class GateResult:
    """A gate's outcome; ``missing`` explains a value that could not be found (the gate then fails)."""

    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool
    source: str
    description: str = ""
    baseline: str | None = None
    missing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _evaluate(gate: Gate, lookup: MetricLookup) -> GateResult:
    found = [lookup.get(gate.metric)] + ([lookup.get(gate.baseline)] if gate.baseline else [])
    missing = [m for m in found if m.value is None]
    source = "; ".join(m.source for m in found)
    if missing:
        return GateResult(gate.metric, gate.op, gate.threshold, None, False, source, gate.description,
                          gate.baseline, missing="; ".join(m.source for m in missing))
    value = found[0].value - (found[1].value if gate.baseline else 0.0)
    passed = math.isfinite(value) and OPS[gate.op](value, gate.threshold)
    return GateResult(gate.metric, gate.op, gate.threshold, value, bool(passed), source, gate.description,
                      gate.baseline)


def evaluate_gates(gates: Iterable[Gate], lookup: MetricLookup) -> list[GateResult]:
    """Every gate, evaluated (none short-circuits: the caller reports all failures at once)."""
    return [_evaluate(gate, lookup) for gate in gates]


def format_table(results: Iterable[GateResult]) -> str:
    """A plain-text table: metric, value, op, threshold, passed, source."""
    rows = [("metric", "value", "op", "threshold", "passed", "source")]
    for r in results:
        label = f"{r.metric} - {r.baseline}" if r.baseline else r.metric
        value = "MISSING" if r.value is None else f"{r.value:.4g}"
        rows.append((label, value, r.op, f"{r.threshold:g}", "yes" if r.passed else "NO", r.source))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5]
                     for row in rows)
