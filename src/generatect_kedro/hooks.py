"""Project hooks: environment hygiene for every Kedro session (offline, no telemetry)."""

from __future__ import annotations

import os

from kedro.framework.hooks import hook_impl


class ProjectHooks:
    @hook_impl
    def after_context_created(self, context) -> None:  # noqa: ANN001 - kedro passes its context
        # Nothing is downloaded at run time: encoders and weights come from local paths.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("DO_NOT_TRACK", "true")
