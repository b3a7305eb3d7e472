"""Promotion stage node: each considered model's newly registered version goes through its gates.

The gates come with ``params:promotion`` (``promotion.gates``, the same gates `generatect promote` reads), so the node
is a function of its inputs; its only side effect is the registry's (alias, tags, history run), which is
the stage's purpose. A refusal is reported, and fails the run only with ``fail_on_refusal: true``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from generatect_kedro.promotion import PromotionError, model_name, promote
from generatect_kedro.registry import RegistryError

LOG = logging.getLogger(__name__)


class PromotionRefused(RuntimeError):
    """``fail_on_refusal`` is set and at least one considered model was not promoted."""


def _entry(name: str, info: Mapping[str, Any] | None, gates: Mapping[str, Any], params: Mapping[str, Any],
           ) -> dict[str, Any]:
    if not info or not info.get("version"):
        why = (info or {}).get("skipped") or "its model_version JSON names no registered version"
        return {"version": None, "status": "skipped", "promoted": False, "message": f"{name}: {why}", "gates": []}
    if str(info.get("name", name)) != name:
        return {"version": str(info["version"]), "status": "error", "promoted": False, "gates": [],
                "message": f"{name}: the model_version JSON is for {info.get('name')!r}"}
    try:
        result = promote(name, str(info["version"]), gates=gates.get(name) or [], reason=params.get("reason"),
                         actor=params.get("actor") or None, dry_run=bool(params.get("dry_run", False)))
    except (RegistryError, PromotionError, ValueError) as error:
        return {"version": str(info["version"]), "status": "error", "promoted": False, "gates": [],
                "message": f"{name} v{info['version']}: {error}"}
    (LOG.info if result.status != "refused" else LOG.warning)("%s\n%s", result.message, result.table())
    return {key: value for key, value in result.to_dict().items() if key != "model"}


def _tag_active_run(models: Mapping[str, Mapping[str, Any]]) -> None:
    """Inside a ``kedro run``: ``promotion.<model>`` = ``<status> v<version>`` on kedro-mlflow's run."""
    from generatect_kedro.training.tracking import active_mlflow

    mlflow = active_mlflow()
    if mlflow is None:
        return
    try:
        mlflow.set_tags({f"promotion.{name}": f"{m['status']} v{m['version']}" for name, m in models.items()})
    except Exception as error:  # tracking trouble must not lose the report
        LOG.warning("could not tag the MLflow run with the promotion outcome: %s", error)


def promote_trained_models(ctvit_model_version: Mapping[str, Any] | None,
                           transformer_model_version: Mapping[str, Any] | None,
                           superres_model_version: Mapping[str, Any] | None,
                           params: Mapping[str, Any], evaluation_metrics: Mapping[str, Any] | None = None,
                           ) -> dict[str, Any]:
    """Promote (or refuse) the version each training pipeline registered; a JSON report per model.

    ``evaluation_metrics`` (the evaluation pipeline's headline numbers, ``{}`` when it has not run) orders
    promotion after evaluation in one ``kedro run``; the gates read the same numbers from the versions' tags.
    """
    versions = {"generatect-ctvit": ctvit_model_version, "generatect-transformer": transformer_model_version,
                "generatect-superres": superres_model_version}
    considered = [model_name(str(m)) for m in (params.get("models") or list(versions))]
    unknown = sorted(set(considered) - set(versions))
    if unknown:
        raise ValueError(f"promotion.models: unknown model(s) {unknown}; known: {sorted(versions)}")
    gates = {model_name(str(k)): v for k, v in dict(params.get("gates") or {}).items()}
    models = {name: _entry(name, versions[name], gates, params) for name in considered}
    not_promoted = {n: m["message"] for n, m in models.items() if m["status"] in ("refused", "error", "skipped")}
    report = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fail_on_refusal": bool(params.get("fail_on_refusal", False)),
        "models": models,
        "evaluation_metrics": dict(evaluation_metrics or {}),
        "summary": {status: sorted(n for n, m in models.items() if m["status"] == status)
                    for status in ("promoted", "noop", "dry-run", "refused", "error", "skipped")},
    }
    _tag_active_run(models)
    if not_promoted and report["fail_on_refusal"]:
        raise PromotionRefused("promotion.fail_on_refusal is set and not every model was promoted:\n"
                               + "\n".join(f"- {message}" for message in not_promoted.values()))
    return report


def promote_generator(generator_model_version: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Promote the just-registered ``generatect-generator`` through its gates (by default: every component it
    pins is the current champion). Runs in the generation pipeline, after the generator is registered."""
    name = model_name(str((generator_model_version or {}).get("name") or "generatect-generator"))
    gates = {model_name(str(k)): v for k, v in dict(params.get("gates") or {}).items()}
    entry = _entry(name, generator_model_version, gates, params)
    _tag_active_run({name: entry})
    return {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": {name: entry}}
