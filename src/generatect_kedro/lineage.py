"""The lineage chain of a generated volume: file → prompt, seed, sampler → models → training runs → data.

The sidecar record (or the copy in a synthetic DICOM series' private block) is the starting point; every
claim that can be checked is re-checked: the volume's hashes against the files, each model's registered
``weights_sha256`` tag against the record. The registry being unreachable or a version deleted is reported
as UNVERIFIED, never as an error that hides what the record says. Only pseudonymous keys and hashes appear.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

VERIFIED, MISMATCH, UNVERIFIED, MISSING = "VERIFIED", "MISMATCH", "UNVERIFIED", "MISSING"
MODEL_ROLES = ("ctvit", "transformer", "superres")
RUN_TAGS = ("git_commit", "git_dirty", "dvc_lock_sha256", "kedro_env",
            "data.cohort_sha256", "data.splits_sha256", "data.manifest_sha256")
_KEY_PARAM_WORDS = ("lr", "learning_rate", "batch", "steps", "epoch", "seed", "optimizer", "grid", "timesteps")
_MAX_KEY_PARAMS = 12

__all__ = ["LineageError", "build_chain", "format_chain", "load_record", "tracking_uri"]


class LineageError(ValueError):
    """FILE is not something whose lineage we can read (named in the message, with the reason)."""


# ---- the starting point ----------------------------------------------------------------------------------

def _stem_of(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".json"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LineageError(f"{path}: not a readable lineage sidecar ({error})") from error
    if not isinstance(record, dict) or "item" not in record:
        raise LineageError(f"{path}: JSON without an 'item' section is not a GenerateCT lineage sidecar")
    return record


def load_record(path: str | os.PathLike) -> tuple[dict, dict]:
    """(record, source) for a generated NIfTI, its sidecar, or one slice of a synthetic DICOM series."""
    path = Path(path)
    if not path.is_file():
        raise LineageError(f"{path}: no such file")
    if path.name.endswith((".nii.gz", ".nii")):
        sidecar = path.with_name(f"{_stem_of(path)}.json")
        if not sidecar.is_file():
            raise LineageError(f"{path}: no lineage sidecar {sidecar.name} beside it")
        return _read_json(sidecar), {"kind": "nifti", "nifti": path, "sidecar": sidecar}
    if path.suffix == ".json":
        record = _read_json(path)
        nifti = path.parent / str((record.get("volume") or {}).get("nifti") or f"{_stem_of(path)}.nii.gz")
        return record, {"kind": "sidecar", "nifti": nifti, "sidecar": path}
    return _load_dicom(path)


def _load_dicom(path: Path) -> tuple[dict, dict]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from generatect_kedro.dicom.synthetic import read_lineage_record

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as error:
        raise LineageError(f"{path}: neither a NIfTI, a sidecar JSON nor a DICOM file ({error})") from error
    try:
        record = read_lineage_record(ds)
    except ValueError as error:
        raise LineageError(f"{path}: GENERATECT private block holds unreadable JSON ({error})") from error
    if record is None:
        raise LineageError(f"{path}: not a synthetic GenerateCT DICOM file (no 'GENERATECT 1' private block)")
    return record, {"kind": "dicom", "dicom": path, "series_instance_uid": str(ds.get("SeriesInstanceUID", ""))}


# ---- checks ----------------------------------------------------------------------------------------------

def _check(expected: Any, actual: Any) -> str:
    if expected in (None, "") or actual in (None, ""):
        return UNVERIFIED
    return VERIFIED if str(expected) == str(actual) else MISMATCH


def _verify_nifti(nifti: Path, section: dict) -> dict:
    from generatect_kedro.io.nifti_volume import NiftiVolumeDataset

    out: dict[str, Any] = {"file": str(nifti)}
    if not nifti.is_file():
        return {**out, "status": MISSING, "reason": f"{nifti} does not exist"}
    try:
        volume = NiftiVolumeDataset(str(nifti)).load()
    except Exception as error:  # noqa: BLE001 - a corrupt file is a finding, not a crash
        return {**out, "status": MISMATCH, "reason": f"{nifti} is unreadable: {error}"}
    out["file_sha256"] = volume.meta["sha256"]
    out["voxel_sha256"] = volume.voxel_sha256()
    out["file_check"] = _check(section.get("nifti_sha256"), out["file_sha256"])
    out["voxel_check"] = _check(section.get("voxel_sha256"), out["voxel_sha256"])
    out["status"] = _worst(out["file_check"], out["voxel_check"])
    return out


def _verify_dicom_series(path: Path, section: dict) -> dict:
    """Read the whole series the slice belongs to (same folder, same SeriesInstanceUID) back to HU."""
    import pydicom

    from generatect_kedro.dicom.hu import volume_from_files
    from generatect_kedro.volume import canonical

    series_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    files = []
    for candidate in sorted(path.parent.iterdir()):
        try:
            if str(pydicom.dcmread(candidate, stop_before_pixels=True).get("SeriesInstanceUID")) == series_uid:
                files.append(candidate)
        except Exception:  # noqa: BLE001 - other files in the folder are not ours to judge
            continue
    out: dict[str, Any] = {"file": str(path), "series_files": len(files)}
    try:
        volume = canonical(volume_from_files(files, hu_window=(-32768, 32767)))
    except Exception as error:  # noqa: BLE001
        return {**out, "status": MISMATCH, "reason": f"series of {path} cannot be read back: {error}"}
    out["voxel_sha256"] = volume.voxel_sha256()
    out["voxel_check"] = _check(section.get("ras_voxel_sha256") or section.get("voxel_sha256"), out["voxel_sha256"])
    out["status"] = out["voxel_check"]
    return out


def _worst(*statuses: str) -> str:
    for status in (MISMATCH, MISSING, UNVERIFIED):
        if status in statuses:
            return status
    return VERIFIED


# ---- the registry ----------------------------------------------------------------------------------------

def tracking_uri(project_dir: str | os.PathLike | None = None, env: str | None = None) -> str | None:
    """`MLFLOW_TRACKING_URI` if set, else `server.mlflow_tracking_uri` of the project's conf (+ env overlay)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if project_dir is None:
        return None
    from kedro.config import OmegaConfigLoader

    from generatect_kedro.settings import CONFIG_LOADER_ARGS

    project = Path(project_dir).resolve()
    args = {**CONFIG_LOADER_ARGS, "custom_resolvers": {"project_dir": lambda: project.as_posix()}}
    loader = OmegaConfigLoader(str(project / "conf"), env=env, **args)
    return str(loader["mlflow"]["server"]["mlflow_tracking_uri"])


def _client(uri: str | None) -> tuple[Any | None, str | None]:
    """An MlflowClient, or (None, why not). A missing SQLite file is unreachable (never created here)."""
    if not uri:
        return None, "no MLflow tracking URI (set MLFLOW_TRACKING_URI or pass --project-dir)"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            return None, f"registry unreachable: no MLflow database at {db}"
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_registered_models(max_results=1)
    except Exception as error:  # noqa: BLE001 - whatever the backend raises, we report and carry on
        return None, f"registry unreachable at {uri}: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return client, None


def _time(ms: Any) -> str | None:
    if ms is None:
        return None
    return _dt.datetime.fromtimestamp(int(ms) / 1000, tz=_dt.timezone.utc).isoformat(timespec="seconds")


def _run_summary(client: Any, run_id: str | None, stage: str | None = None) -> dict:
    if not run_id:
        return {"status": UNVERIFIED, "reason": "no run id recorded"}
    try:
        run = client.get_run(run_id)
    except Exception as error:  # noqa: BLE001
        return {"run_id": run_id, "status": UNVERIFIED, "reason": f"run not found: {str(error).splitlines()[0][:200]}"}
    params = dict(run.data.params)
    # One `kedro run` logs every stage's parameters: a model's own (``<stage>.…``) come first.
    own = {k: v for k, v in params.items() if stage and k.startswith(f"{stage}.")} or params
    key_params = {k: v for k, v in sorted(own.items())
                  if any(word in k.lower().rsplit(".", 1)[-1] for word in _KEY_PARAM_WORDS)}
    return {"run_id": run_id, "status": VERIFIED, "run_name": run.info.run_name,
            "start_time": _time(run.info.start_time), "run_status": run.info.status,
            "key_params": dict(list(key_params.items())[:_MAX_KEY_PARAMS]), "param_count": len(params),
            "metrics": dict(sorted(run.data.metrics.items())),
            "tags": {k: run.data.tags[k] for k in RUN_TAGS if k in run.data.tags}}


def _model_link(client: Any | None, why_not: str | None, role: str, recorded: dict) -> dict:
    out: dict[str, Any] = {"role": role, "recorded": recorded}
    name, version = recorded.get("name"), recorded.get("version")
    if client is None:
        return {**out, "status": UNVERIFIED, "reason": why_not}
    try:
        registered = client.get_model_version(str(name), str(version))
    except Exception as error:  # noqa: BLE001
        return {**out, "status": UNVERIFIED,
                "reason": f"{name} version {version} is not in the registry (deleted?): "
                          f"{str(error).splitlines()[0][:200]}"}
    tags = dict(registered.tags or {})
    try:
        aliases = {str(a): str(v) for a, v in (client.get_registered_model(str(name)).aliases or {}).items()}
    except Exception:  # noqa: BLE001
        aliases = {}
    out["aliases"] = sorted(a for a, v in aliases.items() if v == str(version))
    out["current_aliases"] = dict(sorted(aliases.items()))
    out["registry_weights_sha256"] = tags.get("weights_sha256")
    out["weights_check"] = _check(recorded.get("weights_sha256"), tags.get("weights_sha256"))
    run_id = recorded.get("training_run_id") or tags.get("training_run_id") or registered.run_id
    out["training_run"] = _run_summary(client, run_id, stage=role)
    out["status"] = out["weights_check"]
    return out


# ---- the chain -------------------------------------------------------------------------------------------

def build_chain(path: str | os.PathLike, uri: str | None) -> dict:
    """Everything `generatect lineage` prints, as a JSON-able dict with an overall `status`."""
    record, source = load_record(path)
    section = dict(record.get("volume") or {})
    if source["kind"] == "dicom":
        volume_check = _verify_dicom_series(source["dicom"], section)
    else:
        volume_check = _verify_nifti(source["nifti"], section)
    client, why_not = _client(uri)
    models = {role: _model_link(client, why_not, role, dict(info or {}))
              for role, info in sorted((record.get("models") or {}).items(), key=lambda kv: _role_order(kv[0]))}
    generation_run = None
    if record.get("generation_run_id"):
        generation_run = (_run_summary(client, record["generation_run_id"]) if client is not None
                          else {"run_id": record["generation_run_id"], "status": UNVERIFIED, "reason": why_not})
    statuses = [volume_check["status"], *(m["status"] for m in models.values())]
    unverified = []
    if volume_check["status"] == UNVERIFIED:
        unverified.append(f"volume: {volume_check.get('reason', 'no recorded hash')}")
    unverified += [f"{role}: {m.get('reason', 'no recorded weights sha256')}"
                   for role, m in models.items() if m["status"] == UNVERIFIED]
    return {
        "source": {k: str(v) for k, v in source.items()}, "volume": {"recorded": section, "check": volume_check},
        "item": record.get("item") or {}, "sampler": record.get("sampler") or {},
        "text_encoder": record.get("text_encoder") or {}, "geometry": record.get("geometry") or {},
        "models": models, "code": record.get("code") or {}, "data": record.get("data") or {},
        "generation_run": generation_run, "created_utc": record.get("created_utc"),
        "schema": record.get("schema"), "tracking_uri": uri, "registry_error": why_not,
        "unverified": unverified, "status": _worst(*statuses),
    }


def _role_order(role: str) -> int:
    return MODEL_ROLES.index(role) if role in MODEL_ROLES else len(MODEL_ROLES)


def _kv(mapping: dict, skip: tuple[str, ...] = ()) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in mapping.items() if k not in skip) or "-"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _own(values: dict, prefix: str) -> dict:
    """The entries whose key starts with ``prefix`` (e.g. ``ctvit/``), or all of them when none does."""
    return {k: v for k, v in values.items() if k.startswith(prefix)} or values


def format_chain(chain: dict) -> str:
    """The human-readable chain, top (the file) to bottom (the data version)."""
    vol, check = chain["volume"]["recorded"], chain["volume"]["check"]
    item = chain["item"]
    source = chain["source"]
    lines = [f"GenerateCT lineage ({chain.get('schema')}) of {source.get('nifti') or source.get('dicom')}",
             f"status: {chain['status']}", "", "volume"]
    if source["kind"] == "dicom":
        lines.append(f"  DICOM series   {source.get('series_instance_uid')} ({check.get('series_files')} files)")
    else:
        lines.append(f"  file           {check['file']}")
        lines.append(f"  file sha256    {check.get('file_sha256', '-')}  {check.get('file_check', check['status'])}")
    lines.append(f"  voxel sha256   {check.get('voxel_sha256', '-')}  {check.get('voxel_check', check['status'])}")
    if check.get("reason"):
        lines.append(f"  !! {check['reason']}")
    lines.append(f"  shape (i,j,k)  {vol.get('shape_ijk')}  spacing mm {vol.get('spacing_mm')}  "
                 f"{vol.get('dtype', '?')} {vol.get('units', '?')}")
    lines += ["", "generation",
              f"  item           {item.get('item_id')} (row {item.get('row')}, index {item.get('index_in_row')})",
              f"  seed           {item.get('seed')}   slices {item.get('slice_count')}",
              f"  prompt         {item.get('prompt')}",
              f"  created        {chain.get('created_utc')}"]
    sampler = chain["sampler"]
    if sampler.get("transformer") is not None:
        lines.append(f"  transformer    {_kv(sampler['transformer'])}")
    for index, stage in enumerate(sampler.get("superres") or []):
        lines.append(f"  superres[{index}]    {_kv(stage)}")
    if sampler.get("precision") is not None:  # bf16 and fp32 give close, not identical, volumes for a seed
        lines.append(f"  precision      {sampler['precision']}")
    lines.append(f"  text encoder   {_kv(chain['text_encoder'])}")
    lines.append(f"  geometry       {_kv(chain['geometry'])}")
    if chain["generation_run"]:
        run = chain["generation_run"]
        lines.append(f"  mlflow run     {run.get('run_id')} {run.get('run_name', '')} {run.get('reason', '')}".rstrip())
    lines += ["", "models"]
    for role, model in chain["models"].items():
        rec = model["recorded"]
        lines.append(f"  {role}: {rec.get('name')} version {rec.get('version')} "
                     f"(requested {rec.get('requested')}) aliases now: {', '.join(model.get('aliases', [])) or '-'}")
        lines.append(f"    weights sha256  {rec.get('weights_sha256')}  "
                     f"{model.get('weights_check', UNVERIFIED)} against the registered version's tag")
        if model.get("reason"):
            lines.append(f"    !! {model['reason']}")
        run = model.get("training_run")
        if run is None:
            lines.append(f"    training run    {rec.get('training_run_id')} (recorded; not verified)")
            continue
        lines.append(f"    training run    {run.get('run_id')} \"{run.get('run_name', '')}\" started "
                     f"{run.get('start_time', '?')} {run.get('run_status', '')} {run.get('reason', '')}".rstrip())
        # A `kedro run` is one MLflow run for every stage: show this model's own (prefixed) entries when any.
        if run.get("key_params"):
            lines.append(f"      params   {_kv(_own(run['key_params'], role + '.'))}")
        if run.get("metrics"):
            lines.append(f"      metrics  {_kv(_own(run['metrics'], role + '/'))}")
        if run.get("tags"):
            lines.append(f"      tags     {_kv(run['tags'])}")
    lines += ["", "code", f"  {_kv(chain['code'])}", "", "data", f"  {_kv(chain['data'])}"]
    if chain["unverified"]:
        lines += ["", "could not verify:", *(f"  - {reason}" for reason in chain["unverified"])]
    return "\n".join(lines)
