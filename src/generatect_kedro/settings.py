"""Kedro project settings."""

from pathlib import Path

from kedro.config import OmegaConfigLoader

from generatect_kedro.hooks import ProjectHooks

HOOKS = (ProjectHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/<env> overrides individual keys of conf/base instead of replacing whole top-level blocks.
    # `${project_dir:}`: the folder Kedro runs in (the project root), so SQLite and artifact URIs are absolute.
    "custom_resolvers": {"project_dir": lambda: Path.cwd().resolve().as_posix()},
    "merge_strategy": {"parameters": "soft", "mlflow": "soft", "deepspeed": "soft"},
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**"],
        "deepspeed": ["deepspeed*", "deepspeed*/**"],
    },
}
