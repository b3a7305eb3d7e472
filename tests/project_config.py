"""The project's own conf/base, loaded the way Kedro loads it, for pipeline tests on temporary paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader

from generatect_kedro.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[1] / "conf"


def _loader() -> OmegaConfigLoader:
    return OmegaConfigLoader(str(CONF), base_env="base", default_run_env="base",
                             custom_resolvers=CONFIG_LOADER_ARGS["custom_resolvers"])


def catalog_config(names: str | list[str], root: Path) -> dict[str, dict[str, Any]]:
    """The entries of conf/base/catalog_<name>.yml with `data/…` moved under `root`.

    kedro-mlflow wrappers are replaced by what they wrap (tests do not track); `runtime_params`
    defaults resolve as in a plain `kedro run`.
    """
    import yaml

    names = [names] if isinstance(names, str) else list(names)
    wanted = set()
    for name in names:
        wanted |= set(yaml.safe_load((CONF / "base" / f"catalog_{name}.yml").read_text()) or {})
    out = {}
    for key, entry in _loader()["catalog"].items():
        if key not in wanted:
            continue
        out[key] = _localised(entry, root)
    return out


def _localised(entry: dict[str, Any], root: Path) -> dict[str, Any]:
    """The entry with its paths under ``root``, wrappers included (RankAwareDataset, OptionalDataset…);
    kedro-mlflow's artifact wrapper is dropped (tests run without an active MLflow run)."""
    entry = dict(entry)
    if str(entry["type"]).startswith("kedro_mlflow."):
        return _localised(dict(entry.get("dataset", {"type": "kedro.io.MemoryDataset"})), root)
    for field in ("filepath", "path"):
        if field in entry:
            entry[field] = str(root / entry[field])
    if isinstance(entry.get("dataset"), dict) and "type" in entry["dataset"]:
        entry["dataset"] = _localised(entry["dataset"], root)
    return entry


def parameters(name: str) -> dict[str, Any]:
    """conf/base parameters under the top-level key `name`."""
    return dict(_loader()["parameters"][name])
