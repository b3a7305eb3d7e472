"""An inter-process lock around a registered model's champion record, so concurrent promotions serialise.

The MLflow alias is single-valued, but a promotion also writes tags on two versions and a history run;
without a lock two processes could interleave and leave tags that name the wrong previous champion.
The lock file lies beside a ``sqlite:///…/mlflow.db`` database (every process using that database sees
it); for any other store (a tracking server) it lies in ``GENERATECT_PROMOTION_LOCK_DIR`` or the temp
folder, which serialises promotions from one machine only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_DIR_ENV", "PromotionLockTimeout", "lock_path", "promotion_lock"]

LOCK_DIR_ENV = "GENERATECT_PROMOTION_LOCK_DIR"


class PromotionLockTimeout(TimeoutError):
    """Another promotion held the lock for longer than the timeout."""


def lock_path(registry_uri: str, model: str, lock_dir: str | Path | None = None) -> Path:
    """``<db>.promotion-<model>.lock`` beside a SQLite database, else ``<lock dir>/<uri hash>-<model>.lock``."""
    safe_model = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    if registry_uri.startswith("sqlite:///") and lock_dir is None:
        database = Path(registry_uri[len("sqlite:///"):].split("?", 1)[0]).resolve()
        return database.with_name(f"{database.name}.promotion-{safe_model}.lock")
    folder = Path(lock_dir or os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "generatect-locks")
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(registry_uri.encode()).hexdigest()[:16]
    return folder / f"{digest}-{safe_model}.lock"


@contextlib.contextmanager
def promotion_lock(path: Path, timeout_s: float = 120.0) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (``filelock`` when installed, else ``fcntl.flock``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import filelock
    except ImportError:  # pragma: no cover - filelock is normally installed (torch needs it)
        filelock = None
    if filelock is not None:
        lock = filelock.FileLock(str(path), timeout=timeout_s)
        try:
            lock.acquire()
        except filelock.Timeout as error:
            raise PromotionLockTimeout(f"another promotion holds {path} for more than {timeout_s:g} s; "
                                       "retry, or remove the file if no promotion is running") from error
        try:
            yield path
        finally:
            lock.release()
        return
    import fcntl  # pragma: no cover - the fallback

    with open(path, "a+") as handle:  # pragma: no cover
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PromotionLockTimeout(f"another promotion holds {path} for more than {timeout_s:g} s")
                time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
