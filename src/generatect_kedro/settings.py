"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from generatect_kedro.hooks import ProjectHooks

HOOKS = (ProjectHooks(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**"],
        "deepspeed": ["deepspeed*", "deepspeed*/**"],
        "gates": ["gates*", "gates*/**"],
    },
}
