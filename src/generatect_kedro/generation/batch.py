"""Batch generation over a prompts table: items, sharding over ranks, resume, progress, one MLflow run.

* **Items.** Row r of the table (``prompt``, optional ``seed``, ``count``, ``slice_count``) expands to ``count``
  items k = 0…count−1 with seed = row seed + k (row seed = ``base_seed + r`` when the row has none) and the id
  ``gen-<r>-<k>-<hash>`` (hash of prompt, seed, slice count). Ids name the files: no prompt text, hence no
  patient detail, ever reaches a file name, a log line or MLflow.
* **Resume.** The writer (`generation.outputs.write_generated_volume`) writes the sidecar ``<id>.json`` last and
  atomically, so its presence means "finished": such items are skipped. Leftover temporary files of a killed
  item are removed before it is generated again.
* **Ranks.** Under torchrun every rank takes items ``rank::world_size`` (one GPU per rank via ``LOCAL_RANK``);
  seeds belong to items, so the files are the same as in one process. No process group is needed: rank 0
  opens (or reuses) the MLflow run and publishes its id in a small file; each rank reports its rows in a file
  when done; rank 0 waits for all of them and logs one summary. Only rank 0 talks to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from generatect_kedro.generation.models import GenerationError
from generatect_kedro.generation.sampler import GenerationItem, VolumeSampler
from generatect_kedro.utils.atomic import atomic_write_text

LOG = logging.getLogger(__name__)

__all__ = ["BatchSettings", "ITEM_COLUMNS", "SCHEMA", "build_record_base", "expand_prompts", "generate_batch",
           "rank_info", "shard"]

SCHEMA = "generatect-lineage/1"
ITEM_COLUMNS = ["item_id", "row", "index_in_row", "seed", "slice_count", "prompt_sha256", "status", "rank",
                "seconds", "nifti", "sidecar"]
Writer = Callable[..., Mapping[str, str]]


@dataclass(frozen=True)
class BatchSettings:
    """``generation`` knobs that shape a batch (not the models or the sampler)."""

    out_dir: Path
    experiment: str = "generatect-generation"
    dicom: bool = False
    preview: bool = True
    progress: bool = True
    track: bool = True  # log to MLflow (rank 0)
    rank_wait_s: float = 6 * 3600.0  # how long rank 0 waits for the other ranks' reports

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BatchSettings:
        p = dict(params)
        return cls(out_dir=Path(str(p.get("output_dir", "data/07_model_output/generated"))),
                   experiment=str(p.get("experiment", cls.experiment)), dicom=bool(p.get("dicom", False)),
                   preview=bool(p.get("preview", True)), progress=bool(p.get("progress", True)),
                   track=bool(p.get("track", True)), rank_wait_s=float(p.get("rank_wait_s", cls.rank_wait_s)))


# ---- items ---------------------------------------------------------------------------------------------

def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip() != ""


def _int(value: Any, what: str, row: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GenerationError(f"prompts row {row}: {what} {value!r} is not a whole number") from None
    if not number.is_integer():
        raise GenerationError(f"prompts row {row}: {what} {value!r} is not a whole number")
    return int(number)


def item_id(row: int, index: int, prompt: str, seed: int, slice_count: int) -> str:
    digest = hashlib.sha256(f"{prompt}\0{seed}\0{slice_count}".encode("utf-8")).hexdigest()[:8]
    return f"gen-{row:04d}-{index:03d}-{digest}"


def expand_prompts(table: pd.DataFrame, *, default_slice_count: int, base_seed: int = 0,
                   default_count: int = 1) -> list[GenerationItem]:
    """Rows → items (see the module docstring); a missing or empty ``prompt`` column is an error."""
    if "prompt" not in table.columns:
        raise GenerationError(f"the prompts table needs a `prompt` column; it has {list(table.columns)}")
    unknown = sorted(set(table.columns) - {"prompt", "seed", "count", "slice_count"})
    if unknown:
        LOG.warning("prompts table: ignoring column(s) %s", ", ".join(unknown))
    items = []
    for row, record in enumerate(table.to_dict("records")):
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise GenerationError(f"prompts row {row} has an empty prompt")
        prompt = " ".join(prompt.split())
        seed = _int(record["seed"], "seed", row) if _present(record.get("seed")) else base_seed + row
        count = _int(record["count"], "count", row) if _present(record.get("count")) else default_count
        slices = (_int(record["slice_count"], "slice_count", row) if _present(record.get("slice_count"))
                  else default_slice_count)
        if count < 1:
            raise GenerationError(f"prompts row {row}: count must be ≥ 1, got {count}")
        for k in range(count):
            items.append(GenerationItem(item_id(row, k, prompt, seed + k, slices), prompt, seed + k, slices, row, k))
    return items


def rank_info() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them; (0, 1) in one process."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise GenerationError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return rank, world


def shard(items: Sequence[GenerationItem], rank: int, world: int) -> list[GenerationItem]:
    return list(items[rank::world])


# ---- lineage -------------------------------------------------------------------------------------------

def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("generatect-kedro")
    except metadata.PackageNotFoundError:
        return "unknown"


def _training_data(refs: Mapping[str, Any]) -> dict[str, Any]:
    """Per model: its version's data tags and, best effort, the ``data.*`` tags of its training run."""
    out: dict[str, Any] = {}
    client = None
    for key, ref in refs.items():
        tags = {k: v for k, v in ref.tags.items() if k in ("dvc_lock_sha256", "kedro_env") or k.startswith("data.")}
        run_id = ref.tags.get("training_run_id")
        if run_id and not run_id.startswith("none"):
            try:
                import mlflow

                client = client or mlflow.MlflowClient()
                tags.update({k: v for k, v in client.get_run(run_id).data.tags.items() if k.startswith("data.")
                             or k == "dvc_lock_sha256"})
            except Exception:  # the training run may live in another tracking store
                pass
        out[key] = tags
    return out


def build_record_base(sampler: VolumeSampler, project_path: Path | None = None) -> dict[str, Any]:
    """Everything in an item's sidecar record except ``item``, ``generation_run_id`` and ``created_utc``."""
    from generatect_kedro.hooks import code_revision, data_version

    project = Path(project_path or Path.cwd())
    models = sampler.models
    return {"schema": SCHEMA, "sampler": sampler.settings.record(), "models": models.record(),
            "text_encoder": dict(models.text_encoder_info), "geometry": sampler.geometry.record(),
            "hu_window": list(sampler.hu_window),
            "code": {"package_version": _package_version(), **code_revision(project)},
            "data": {**data_version(project), "training": _training_data(models.refs)}}


# ---- the batch -----------------------------------------------------------------------------------------

def _handshake_key() -> str:
    return "".join(c for c in os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT") or "local"
                   if c.isalnum() or c in "-_")[:64]


def _wait_for(path: Path, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            return json.loads(path.read_text())
        time.sleep(0.2)
    return None


def _clean_leftovers(out_dir: Path, stem: str) -> None:
    """Temporary files of a killed earlier attempt (atomic writers use ``.<name>.tmp-*`` siblings, where
    <name> is ``<stem>.<ext>`` or ``<stem>_<suffix>``: a longer stem such as ``<stem>0`` is another item's)."""
    for pattern in (f".{stem}.*.tmp-*", f".{stem}_*.tmp-*"):
        for path in out_dir.glob(pattern):
            if path.is_file():
                path.unlink(missing_ok=True)


def _default_writer() -> Writer:
    from generatect_kedro.generation.outputs import write_generated_volume

    return write_generated_volume


def _progress(total: int, rank: int, enabled: bool):
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=f"generate (rank {rank})" if rank else "generate", unit="vol",
                disable=not enabled, mininterval=0.5 if tty else 30.0, maxinterval=60.0 if tty else 300.0,
                dynamic_ncols=tty, position=rank if tty else None)


def generate_batch(sampler: VolumeSampler, items: Sequence[GenerationItem], settings: BatchSettings, *,
                   writer: Writer | None = None, project_path: Path | None = None,
                   ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Generate this rank's unfinished items through ``writer``; rank 0 returns the whole batch's summary and
    item table (other ranks their own share) and logs them to MLflow (see the module docstring)."""
    writer = writer or _default_writer()
    sampler.check(items)  # every item, before any work: a bad slice count fails now, not in hour three
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        raise GenerationError("duplicate item ids: two rows with the same prompt, seed and slice count")
    rank, world = rank_info()
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = build_record_base(sampler, project_path)
    tracker = _Tracker(settings) if rank == 0 else None
    run_id = tracker.start() if tracker is not None else None
    try:
        return _generate(sampler, items, settings, writer, rank, world, out_dir, base, run_id, tracker)
    except BaseException:
        if tracker is not None:
            tracker.fail()
        raise


def _generate(sampler: VolumeSampler, items: Sequence[GenerationItem], settings: BatchSettings, writer: Writer,
              rank: int, world: int, out_dir: Path, base: dict[str, Any], run_id: str | None,
              tracker: _Tracker | None) -> tuple[dict[str, Any], pd.DataFrame]:
    mine = shard(items, rank, world)
    ids = [item.item_id for item in items]
    key = _handshake_key()
    run_file = out_dir / f".generation-run-{key}.json"
    if world > 1:
        if rank == 0:
            atomic_write_text(run_file, json.dumps({"run_id": run_id}))
        else:
            run_id = (_wait_for(run_file, 300.0) or {}).get("run_id")

    started = time.perf_counter()
    rows, todo = [], []
    for item in mine:
        sidecar = out_dir / f"{item.item_id}.json"
        if sidecar.is_file():
            rows.append(_row(item, "skipped", rank, None, out_dir))
        else:
            todo.append(item)
    LOG.info("generation rank %d/%d: %d items, %d already finished, %d to generate -> %s", rank, world, len(mine),
             len(mine) - len(todo), len(todo), out_dir)
    bar = _progress(len(todo), rank, settings.progress)
    tic = time.perf_counter()
    try:
        for item, volume in sampler.generate(todo):
            _clean_leftovers(out_dir, item.item_id)
            record = {**base, "item": item.record(), "generation_run_id": run_id,
                      "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            record = {k: record[k] for k in ("schema", "item", "sampler", "models", "text_encoder", "geometry",
                                             "hu_window", "code", "data", "generation_run_id", "created_utc")}
            written = writer(volume, record, out_dir, item.item_id, dicom=settings.dicom, preview=settings.preview)
            now = time.perf_counter()
            rows.append(_row(item, "generated", rank, now - tic, out_dir, written))
            tic = now
            bar.update(1)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    table = pd.DataFrame(rows, columns=ITEM_COLUMNS)
    if world > 1:
        report = out_dir / f".generation-rank{rank}-{key}.json"
        atomic_write_text(report, json.dumps({"rows": table.to_dict("records"), "seconds": elapsed}, default=str))
        if rank != 0:
            return _summary(table, elapsed, items, sampler, settings, run_id, world, complete=True), table
        tables, missing = [table], []
        for other in range(1, world):
            got = _wait_for(out_dir / f".generation-rank{other}-{key}.json", settings.rank_wait_s)
            if got is None:
                missing.append(other)
            else:
                tables.append(pd.DataFrame(got["rows"], columns=ITEM_COLUMNS))
        if missing:
            LOG.warning("generation: no report from rank(s) %s within %.0f s; the summary covers the others",
                        missing, settings.rank_wait_s)
        for path in [run_file, *(out_dir / f".generation-rank{r}-{key}.json" for r in range(world))]:
            path.unlink(missing_ok=True)
        table = pd.concat(tables, ignore_index=True)
        complete = not missing
    else:
        complete = True
    order = {item_id: i for i, item_id in enumerate(ids)}
    table = table.sort_values("item_id", key=lambda s: s.map(order)).reset_index(drop=True)
    summary = _summary(table, elapsed, items, sampler, settings, run_id, world, complete)
    if tracker is not None:
        tracker.finish(summary, table, sampler)
    return summary, table


def _row(item: GenerationItem, status: str, rank: int, seconds: float | None, out_dir: Path,
         written: Mapping[str, str] | None = None) -> dict[str, Any]:
    nifti = (written or {}).get("nifti") or str(out_dir / f"{item.item_id}.nii.gz")
    return {"item_id": item.item_id, "row": item.row, "index_in_row": item.index_in_row, "seed": item.seed,
            "slice_count": item.slice_count, "prompt_sha256": hashlib.sha256(item.prompt.encode()).hexdigest()[:16],
            "status": status, "rank": rank, "seconds": None if seconds is None else round(seconds, 3),
            "nifti": Path(nifti).name, "sidecar": f"{item.item_id}.json"}


def _summary(table: pd.DataFrame, elapsed: float, items: Sequence[GenerationItem], sampler: VolumeSampler,
             settings: BatchSettings, run_id: str | None, world: int, complete: bool) -> dict[str, Any]:
    generated = table[table["status"] == "generated"]
    seconds = pd.to_numeric(generated["seconds"], errors="coerce")
    return {"schema": "generatect-generation-summary/1", "items": len(items), "generated": int(len(generated)),
            "skipped": int((table["status"] == "skipped").sum()), "complete": complete,
            "seconds_per_volume": round(float(seconds.mean()), 3) if len(generated) else None,
            "stage_seconds_per_volume": ({k: round(v / len(generated), 3) for k, v in sampler.stage_seconds.items()}
                                         if len(generated) else {}),
            "wall_seconds": round(elapsed, 1), "world_size": world, "output_dir": str(settings.out_dir),
            "models": sampler.models.record(), "sampler": sampler.settings.record(),
            "geometry": sampler.geometry.record(), "text_encoder": dict(sampler.models.text_encoder_info),
            "generation_run_id": run_id,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class _Tracker:
    """Rank 0's MLflow run: the active one (inside ``kedro run``) or a new one in ``settings.experiment``."""

    def __init__(self, settings: BatchSettings) -> None:
        self.settings, self.own, self.mlflow = settings, False, None

    def start(self) -> str | None:
        if not self.settings.track:
            return None
        import mlflow

        self.mlflow = mlflow
        if mlflow.active_run() is None:
            from generatect_kedro.training.tracking import ensure_experiment

            mlflow.set_experiment(experiment_id=ensure_experiment(self.settings.experiment))
            mlflow.start_run(run_name="generate")
            self.own = True
        return mlflow.active_run().info.run_id

    def finish(self, summary: Mapping[str, Any], table: pd.DataFrame, sampler: VolumeSampler) -> None:
        if self.mlflow is None:
            return
        mlflow = self.mlflow
        try:
            params = {f"generation/{k}_version": ref.version for k, ref in sampler.models.refs.items()}
            params.update({f"generation/{k}_name": ref.name for k, ref in sampler.models.refs.items()})
            params.update({f"generation/transformer_{k}": v for k, v in
                           sampler.settings.record()["transformer"].items()})
            for stage in sampler.settings.stages:
                params.update({f"generation/superres{stage['stage']}_{k}": v for k, v in stage.items() if k != "stage"})
            params.update({"generation/items": summary["items"], "generation/world_size": summary["world_size"],
                           "generation/spacing_mm": sampler.geometry.spacing_mm})
            mlflow.log_params({k: str(v) for k, v in params.items()})
            metrics = {"generation/volumes_generated": summary["generated"],
                       "generation/volumes_skipped": summary["skipped"]}
            if summary["seconds_per_volume"] is not None:
                metrics["generation/seconds_per_volume"] = summary["seconds_per_volume"]
            metrics.update({f"generation/seconds_per_volume/{stage}": value
                            for stage, value in summary["stage_seconds_per_volume"].items()})
            mlflow.log_metrics(metrics)
            mlflow.log_text(table.to_csv(index=False), "generation/items.csv")
            mlflow.log_dict(dict(summary), "generation/summary.json")
        except Exception as error:  # tracking trouble must not lose finished volumes
            LOG.warning("could not log the generation batch to MLflow: %s", error)
        finally:
            if self.own:
                mlflow.end_run()
                self.own = False

    def fail(self) -> None:
        if self.mlflow is not None and self.own:
            self.mlflow.end_run(status="FAILED")
            self.own = False
