"""The whole generation path as one registered MLflow pyfunc model, ``generatect-generator``.

    info = register_generator(transformer="champion", superres="champion", geometry={"spacing_mm": [.7, .7, 2]})
    # → generatect-generator version N as @challenger; promote it like the others (@champion)

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db \\
        mlflow models serve -m models:/generatect-generator@champion --env-manager local -h 127.0.0.1 -p 5001
    curl -X POST 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_records": [{"prompt": "65 years old male: Cardiomegaly.", "seed": 7}]}'

**What a version pins.** `register_generator` resolves the component aliases to versions *at registration*
and records, in the version's config (kind ``generator``, schema ``generatect-generator/1``):
``components`` = ``{ctvit, transformer, superres: {name, version, weights_sha256}}``, the *effective* sampler
settings (the registered ones with the given overrides applied, as the sidecar's ``sampler`` section), the
output geometry (the sidecar's ``geometry`` section), the default slice count (null = the transformer's
training depth), the text-encoder settings and the device. Promoting a component later does not change what
a generator version serves; register a new generator version for that. Version tags name the components:
``component.transformer = generatect-transformer/3`` (+ ``component.<role>.weights_sha256``).

**Its "weights".** `registry.register_model` needs a weights file; a generator has no weights of its own. Its
``weights.safetensors`` holds one uint8 tensor ``pins``: the canonical JSON (sorted keys, no spaces) of the
``components`` mapping. So the version's ``weights_sha256`` changes exactly when a pinned component does
(re-registering the same pins and settings returns the existing version), and the pyfunc checks on load that
the file and the config agree.

**Serving.** The pyfunc (``registry.make_pyfunc_model``, kind ``generator``) builds a `GeneratorService` in
``load_context``: it resolves the pinned versions in the registry of the *serving* process, which is
MLflow's default one, i.e. ``MLFLOW_TRACKING_URI`` (and ``MLFLOW_REGISTRY_URI`` if set) of the environment
``mlflow models serve`` was started in (it needs it anyway to resolve ``models:/generatect-generator@…``);
each component's registered ``weights_sha256`` tag must equal the pinned one, and `generation.models.
load_models` then checks the downloaded weights against it. ``GENERATECT_PROJECT_DIR`` (default: the working
directory) is where the lineage's ``code`` (git commit) and ``data`` (dvc.lock) sections are read from.
Set ``GENERATECT_DEVICE`` to override the pinned device (``auto``: the GPU when there is one).

**Request** (a pandas DataFrame, a list of dicts or one dict; ``dataframe_records`` over HTTP), per row:
``prompt`` (required), ``seed`` (default 0), ``slice_count`` (default: pinned, else the training depth; 1 + 2k),
``sampler`` (optional overrides in the form of ``generation.sampler``: ``{"transformer": {"steps": 8},
"superres": {...} | [...], "slice_batch_size": 4}``; a dict or its JSON text).

**Response**, per row (JSON-able; over HTTP under ``predictions``):
``volume_hu_int16_b64``: base64 of the int16 HU voxels, little-endian, C order, array axes **(i, j, k) of the
canonical RAS+ voxel grid** (the NIfTI array order: i → x (left→right… the affine says), k → z, axial index),
so ``np.frombuffer(b64decode(s), "<i2").reshape(shape_ijk)`` with ``affine`` is exactly what `generatect
generate` writes to the NIfTI; ``shape_ijk``; ``shape_dhw`` (= (k, j, i) sizes, the (D, H, W) display order of
`volume.to_dhw`); ``affine`` (4×4 voxel → RAS+ mm), ``spacing_mm`` (i, j, k); ``voxel_sha256`` (as in the
sidecar: `HUVolume.voxel_sha256`); ``item_id``; and ``lineage``: the record a sidecar would have (schema
``generatect-lineage/1``: schema, item, sampler, models, text_encoder, geometry, hu_window, code, data,
generation_run_id = null, created_utc, volume) plus ``served_by`` (the generator's pinned components).

**Kedro.** `register_generator_node` is the node function (see its docstring for inputs and outputs).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from generatect_kedro import registry

LOG = logging.getLogger(__name__)

__all__ = ["GENERATOR", "GeneratorService", "KIND", "SCHEMA", "decode_volume", "pins_weights_bytes",
           "register_generator", "register_generator_node"]

GENERATOR = "generatect-generator"
KIND = "generator"
SCHEMA = "generatect-generator/1"
ROLES = ("ctvit", "transformer", "superres")
AXES = "(i, j, k) of the canonical RAS+ voxel grid, C order, little-endian int16 HU (the NIfTI array order)"
_ROW_KEYS = {"prompt", "seed", "slice_count", "sampler"}
_TEXT_ENCODER_KEYS = ("path", "kind", "max_length", "device", "dtype")


class ServingError(ValueError):
    """A generator registration or request that cannot be served as asked (the message says why)."""


__all__.append("ServingError")


# ---- registering ---------------------------------------------------------------------------------------

def _registered_config(ref: registry.ModelRef) -> dict[str, Any]:
    """The config.json of a registered version (without downloading its weights)."""
    with tempfile.TemporaryDirectory(prefix="generatect-generator-") as scratch:
        path = registry._download(ref, f"artifacts/{registry.CONFIG_FILE}", Path(scratch))  # noqa: SLF001
        return json.loads(path.read_text())


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def pins_weights_bytes(components: Mapping[str, Mapping[str, str]]) -> bytes:
    """The generator's ``weights.safetensors``: one uint8 tensor ``pins`` = canonical JSON of the pins."""
    import torch
    from safetensors.torch import save

    data = np.frombuffer(_canonical_json(components).encode("utf-8"), dtype=np.uint8).copy()
    return save({"pins": torch.from_numpy(data)}, metadata={"format": "pt"})  # one key: a reproducible header


def _pins_from_weights(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors.torch import load_file

    return json.loads(load_file(str(path))["pins"].numpy().tobytes().decode("utf-8"))


def _effective_sampler(params: Mapping[str, Any] | None, configs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The sidecar ``sampler`` section for these overrides on these registered configs (validated)."""
    from generatect_kedro.generation.sampler import SamplerSettings

    return SamplerSettings.from_params(params, SimpleNamespace(configs=dict(configs))).record()


def register_generator(transformer: str | int = registry.CHAMPION, superres: str | int = registry.CHAMPION,
                       ctvit: str | int | None = None, *, sampler: Mapping[str, Any] | None = None,
                       geometry: Mapping[str, Any] | None = None, grid_index: Any = None,
                       slice_count: int | None = None, text_encoder: Mapping[str, Any] | None = None,
                       device: str = "auto", alias: str | None = registry.CHALLENGER, name: str = GENERATOR,
                       transformer_name: str = "generatect-transformer", superres_name: str = "generatect-superres",
                       tags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Pin the components' versions *now* and register ``generatect-generator`` (as ``alias``).

    ``transformer``/``superres``: alias or version; ``ctvit``: None = the CT-ViT the transformer's tokens came
    from (an explicit one must have those weights). ``sampler``: overrides in the form of ``generation.sampler``
    (validated against the registered configs; the *effective* settings are pinned). ``geometry``:
    ``generation.geometry`` (``spacing_mm`` wins, else the median of ``grid_index``). Returns
    `registry.register_model`'s dict plus ``components`` (the pins) and ``config``.
    """
    from generatect_kedro.generation.geometry import geometry_from_params
    from generatect_kedro.generation.models import GenerationError, _ctvit_ref

    t_ref = registry.resolve(transformer_name, transformer)
    s_ref = registry.resolve(superres_name, superres)
    t_config, s_config = _registered_config(t_ref), _registered_config(s_ref)
    if t_config.get("kind") != "maskgit":
        raise GenerationError(f"{t_ref.uri} is a {t_config.get('kind')!r}, not a maskgit transformer")
    if s_config.get("kind") != "superres_cascade":
        raise GenerationError(f"{s_ref.uri} is a {s_config.get('kind')!r}, not a superres_cascade")
    c_ref = _ctvit_ref(t_ref, t_config, None if ctvit is None else str(ctvit))
    refs = {"ctvit": c_ref, "transformer": t_ref, "superres": s_ref}
    components = {role: {"name": ref.name, "version": ref.version, "weights_sha256": str(ref.weights_sha256)}
                  for role, ref in refs.items()}
    if slice_count is not None and (int(slice_count) < 1 or isinstance(slice_count, bool)):
        raise ServingError(f"slice_count must be a positive 1 + 2k, got {slice_count!r}")
    config = {
        "kind": KIND,
        "schema": SCHEMA,
        "components": components,
        "requested": {role: refs[role].requested for role in ROLES},
        "sampler": _effective_sampler(sampler, {"transformer": t_config, "superres": s_config}),
        "geometry": geometry_from_params(geometry, grid_index).record(),
        "slice_count": None if slice_count is None else int(slice_count),
        "text_encoder": {k: v for k, v in dict(text_encoder or {}).items() if k in _TEXT_ENCODER_KEYS and v is not None},
        "device": str(device or "auto"),
    }
    version_tags = {**dict(tags or {}), "kind": KIND}
    for role, pin in components.items():
        version_tags[f"component.{role}"] = f"{pin['name']}/{pin['version']}"
        version_tags[f"component.{role}.weights_sha256"] = pin["weights_sha256"]
    with tempfile.TemporaryDirectory(prefix="generatect-generator-") as scratch:
        weights = Path(scratch) / "generator_pins.safetensors"
        weights.write_bytes(pins_weights_bytes(components))
        info = registry.register_model(name, weights, config, version_tags, alias=alias)
    LOG.info("%s version %s pins %s", name, info["version"],
             ", ".join(f"{p['name']}/{p['version']}" for p in components.values()))
    return {**info, "components": components, "config": config}


def register_generator_node(promotion_report: Mapping[str, Any] | None, params: Mapping[str, Any],
                            generation_cohort_geometry: Any = None) -> dict[str, Any]:
    """Kedro node (after promotion): register ``generatect-generator`` pinned to the component versions that
    ``generation.models`` names now (by default the champions just promoted), as ``serving.alias``.

    ``params`` = ``params:generation`` (``models``, ``sampler``, ``geometry``, ``slice_count``,
    ``text_encoder``, ``device``, optional ``serving: {enabled, name, alias}``); ``generation_cohort_geometry``
    (grid_index.csv) gives the cohort-median spacing when ``geometry.spacing_mm`` is null. Returns the
    registration (``{name, version, alias, …, components, config}``), or ``{"skipped": reason}`` when a
    component has no such alias yet (no champion: nothing to serve) or serving is disabled.
    """
    p = dict(params or {})
    serving = dict(p.get("serving") or {})
    if not serving.get("enabled", True):
        return {"skipped": "generation.serving.enabled is false"}
    models = dict(p.get("models") or {})
    try:
        info = register_generator(
            transformer=models.get("transformer") or registry.CHAMPION,
            superres=models.get("superres") or registry.CHAMPION, ctvit=models.get("ctvit"),
            sampler=p.get("sampler"), geometry=p.get("geometry"), grid_index=generation_cohort_geometry,
            slice_count=p.get("slice_count"), text_encoder=p.get("text_encoder"),
            device=str(p.get("device") or "auto"), alias=serving.get("alias", registry.CHALLENGER),
            name=str(serving.get("name") or GENERATOR),
            tags={"promotion_report_at": (promotion_report or {}).get("generated_at")})
    except registry.RegistryError as error:
        LOG.warning("generatect-generator not registered: %s", error)
        return {"skipped": str(error)}
    return json.loads(json.dumps(info, default=str))


# ---- serving -------------------------------------------------------------------------------------------

def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (isinstance(value, str) and not value.strip())


def _merge_sampler(base: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``generation.sampler`` params reproducing the pinned record ``base``, with request ``overrides``."""
    from generatect_kedro.generation.models import GenerationError
    from generatect_kedro.generation.sampler import _STAGE_KEYS

    o = dict(overrides or {})
    unknown = sorted(set(o) - {"transformer", "superres", "batch_size", "slice_batch_size", "precision", "compile"})
    if unknown:
        raise GenerationError(f"sampler: unknown key(s) {', '.join(unknown)}")
    stages = [{k: stage[k] for k in _STAGE_KEYS if k in stage} for stage in base["superres"]]  # older pins: fewer
    extra = o.get("superres") or {}
    per_stage = list(extra) if isinstance(extra, Sequence) else [extra] * len(stages)
    if len(per_stage) > len(stages):
        raise GenerationError(f"sampler.superres has {len(per_stage)} entries for a {len(stages)}-stage cascade")
    for stage, more in zip(stages, per_stage):
        stage.update(dict(more or {}))
    return {"transformer": {**dict(base["transformer"]), **dict(o.get("transformer") or {})}, "superres": stages,
            "batch_size": o.get("batch_size", base["batch_size"]),
            "slice_batch_size": o.get("slice_batch_size", base["slice_batch_size"]),
            "precision": o.get("precision", base.get("precision", "auto")),
            "compile": o.get("compile", base.get("compile", False))}


def _rows(model_input: Any) -> list[dict[str, Any]]:
    """A DataFrame, a list of dicts, or one dict → list of row dicts."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):
        return [dict(r) for r in model_input.to_dict("records")]
    if isinstance(model_input, Mapping):
        return [dict(model_input)]
    if isinstance(model_input, Sequence) and not isinstance(model_input, (str, bytes)):
        if not all(isinstance(r, Mapping) for r in model_input):
            raise ServingError("the request must be records with a `prompt` (dicts / dataframe_records)")
        return [dict(r) for r in model_input]
    raise ServingError(f"cannot read a generation request from a {type(model_input).__name__}; send records with "
                       "a `prompt` (dataframe_records over HTTP)")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic) else
                                 v.tolist() if isinstance(v, np.ndarray) else str(v)))


def decode_volume(prediction: Mapping[str, Any]) -> np.ndarray:
    """The (i, j, k) int16 array of one prediction (see the module docstring)."""
    raw = base64.b64decode(prediction["volume_hu_int16_b64"])
    return np.frombuffer(raw, dtype="<i2").reshape(tuple(prediction["shape_ijk"])).astype(np.int16)


class GeneratorService:
    """The pinned models, loaded once; `predict` turns request rows into volumes + lineage records."""

    def __init__(self, config: Mapping[str, Any], pins_path: str | os.PathLike | None = None,
                 device: str | None = None) -> None:
        from generatect_kedro.generation.batch import build_record_base
        from generatect_kedro.generation.geometry import OutputGeometry
        from generatect_kedro.generation.models import ModelRequest, load_models
        from generatect_kedro.generation.sampler import SamplerSettings, VolumeSampler

        if config.get("kind") != KIND:
            raise ServingError(f"not a generator config (kind {config.get('kind')!r})")
        self.config = dict(config)
        pins = {role: dict(self.config["components"][role]) for role in ROLES}
        if pins_path is not None and _pins_from_weights(pins_path) != pins:
            raise registry.RegistryError("the generator's pins file does not match its config; re-register it")
        for role, pin in pins.items():  # before any download: the registry must still hold the pinned weights
            ref = registry.resolve(pin["name"], pin["version"])
            if ref.weights_sha256 != pin["weights_sha256"]:
                raise registry.RegistryError(
                    f"{ref.uri} now has weights {str(ref.weights_sha256)[:12]}…, the generator pinned "
                    f"{pin['weights_sha256'][:12]}…; the registry ({_registry_uri()}) is not the one it was "
                    "registered in, or the version was replaced")
        device = device or os.environ.get("GENERATECT_DEVICE") or self.config.get("device") or "auto"
        request = ModelRequest(transformer=pins["transformer"]["version"], superres=pins["superres"]["version"],
                               ctvit=pins["ctvit"]["version"], transformer_name=pins["transformer"]["name"],
                               superres_name=pins["superres"]["name"])
        self.models = load_models(request, text_encoder=self.config.get("text_encoder") or None, device=device)
        for role, pin in pins.items():
            ref = self.models.refs[role]
            if (ref.name, ref.version, ref.weights_sha256) != (pin["name"], pin["version"], pin["weights_sha256"]):
                raise registry.RegistryError(f"loaded {ref.uri} is not the pinned {pin['name']}/{pin['version']}")
        self.pins = pins
        self._settings_type, self._sampler_type = SamplerSettings, VolumeSampler
        geometry = dict(self.config["geometry"])
        self.geometry = OutputGeometry(tuple(float(v) for v in geometry["spacing_mm"]), str(geometry["source"]),
                                       str(geometry.get("orientation", "RAS")))
        self.sampler = self._sampler_for(None)
        self.project_path = Path(os.environ.get("GENERATECT_PROJECT_DIR") or Path.cwd())
        self._base = build_record_base(self.sampler, self.project_path)
        self.default_slice_count = self.config.get("slice_count") or self.sampler.default_slice_count
        LOG.info("generator serving %s", ", ".join(f"{p['name']}/{p['version']}" for p in pins.values()))

    def _sampler_for(self, overrides: Mapping[str, Any] | None):
        params = _merge_sampler(self.config["sampler"], overrides)
        settings = self._settings_type.from_params(params, self.models)
        return self._sampler_type(self.models, settings, self.geometry)

    def _items(self, rows: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
        """(GenerationItem, sampler overrides or None) per row, validated."""
        from generatect_kedro.generation.batch import item_id
        from generatect_kedro.generation.sampler import GenerationItem

        out = []
        for row, values in enumerate(rows):
            unknown = sorted(k for k in set(values) - _ROW_KEYS if _present(values[k]))
            if unknown:
                raise ServingError(f"request row {row}: unknown field(s) {', '.join(unknown)}; "
                                   f"known: {', '.join(sorted(_ROW_KEYS))}")
            prompt = values.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ServingError(f"request row {row}: `prompt` is required (a non-empty string)")
            prompt = " ".join(prompt.split())
            seed = _whole(values.get("seed"), "seed", row) if _present(values.get("seed")) else 0
            slices = (_whole(values.get("slice_count"), "slice_count", row) if _present(values.get("slice_count"))
                      else self.default_slice_count)
            if slices is None:
                raise ServingError("the transformer records no grid depth: send a slice_count")
            overrides = values.get("sampler")
            if isinstance(overrides, str) and overrides.strip():
                overrides = json.loads(overrides)
            overrides = dict(overrides) if isinstance(overrides, Mapping) and overrides else None
            out.append((GenerationItem(item_id(row, 0, prompt, seed, int(slices)), prompt, seed, int(slices), row, 0),
                        overrides))
        return out

    def predict(self, model_input: Any) -> list[dict[str, Any]]:
        """One response dict per request row (see the module docstring), in the request's order."""
        rows = _rows(model_input)
        items = self._items(rows)
        samplers: dict[str, Any] = {"": self.sampler}
        groups: dict[str, list[Any]] = {}
        for item, overrides in items:
            key = "" if overrides is None else _canonical_json(overrides)
            if key not in samplers:
                samplers[key] = self._sampler_for(overrides)
            groups.setdefault(key, []).append(item)
        results: dict[int, dict[str, Any]] = {}
        for key, group in groups.items():
            sampler = samplers[key]
            sampler.check(group)
            for item, volume in sampler.generate(group):
                results[item.row] = self._response(item, volume, sampler)
        return [results[i] for i in range(len(items))]

    def _response(self, item: Any, volume: Any, sampler: Any) -> dict[str, Any]:
        from generatect_kedro.volume import canonical

        data = np.ascontiguousarray(np.asarray(volume.data, dtype=np.int16))
        shape = [int(s) for s in data.shape]
        section = {"nifti": None, "voxel_sha256": volume.voxel_sha256(),
                   "ras_voxel_sha256": canonical(volume).voxel_sha256(), "shape_ijk": shape,
                   "shape_dhw": [shape[2], shape[1], shape[0]], "spacing_mm": [round(s, 6) for s in volume.spacing],
                   "affine": np.round(volume.affine, 6).tolist(), "orientation": "RAS+ voxel→mm affine (NIfTI convention)",
                   "dtype": "int16", "units": "HU", "preview": None, "dicom": None}
        base = self._base if sampler is self.sampler else {**self._base, "sampler": sampler.settings.record()}
        record = {**base, "item": item.record(), "generation_run_id": None,
                  "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        record = {k: record[k] for k in ("schema", "item", "sampler", "models", "text_encoder", "geometry",
                                         "hu_window", "code", "data", "generation_run_id", "created_utc")}
        record["volume"] = section
        record["served_by"] = {"model": GENERATOR, "schema": SCHEMA, "components": self.pins}
        return _jsonable({"item_id": item.item_id, "volume_hu_int16_b64": base64.b64encode(data.astype("<i2").tobytes()).decode("ascii"),
                          "dtype": "int16", "axes": AXES, "shape_ijk": shape, "shape_dhw": section["shape_dhw"],
                          "affine": np.asarray(volume.affine, dtype=np.float64).tolist(),
                          "spacing_mm": [float(s) for s in volume.spacing], "voxel_sha256": section["voxel_sha256"],
                          "lineage": record})


def _whole(value: Any, what: str, row: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ServingError(f"request row {row}: {what} {value!r} is not a whole number") from None
    if not number.is_integer():
        raise ServingError(f"request row {row}: {what} {value!r} is not a whole number")
    return int(number)


def _registry_uri() -> str:
    import mlflow

    return mlflow.get_registry_uri()
