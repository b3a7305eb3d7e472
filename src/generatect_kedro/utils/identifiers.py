"""Pseudonymous identifiers: patient, study and series ids never leave ingestion in clear text."""

from __future__ import annotations

import hashlib
import os

DEFAULT_SALT_ENV = "GENERATECT_ID_SALT"


def pseudonym(value: object, kind: str, salt: str | None = None, length: int = 16) -> str:
    """A stable, non-reversible id such as `pat-3f2a…`; the salt comes from the caller or the environment.

    Hospitals set `GENERATECT_ID_SALT` (conf/local or the environment) so that hashes cannot be matched
    against hashes of guessed ids made elsewhere.
    """
    if value is None or (isinstance(value, float) and value != value):
        raise ValueError(f"cannot pseudonymise a missing {kind} id")
    salt = salt if salt is not None else os.environ.get(DEFAULT_SALT_ENV, "")
    digest = hashlib.sha256(f"{salt}\x1f{kind}\x1f{value}".encode("utf-8")).hexdigest()
    return f"{kind}-{digest[:length]}"
