"""`generatect check-config --env ENV [--gpu-memory-gb N] [--bf16-tflops P]`: will this configuration fit its GPUs?

Builds every model of the environment on the meta device, estimates per-GPU memory of each training stage and
of generation (`generatect_kedro.capacity`), validates the DeepSpeed configs and compares with the GPU named
in the ``hardware`` parameters. Exits 1 naming each stage that does not fit, its estimate, the limit and what
to change. Also prints the FLOPs per training step and per generated volume, and with the GPU's dense bf16
peak (``hardware.bf16_tflops``) the time they take at that peak and at 40 % of it (compute never fails the
check). Nothing is allocated: it runs on a CPU in seconds.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("check-config")
@click.option("--env", default="base", show_default=True,
              help="Kedro configuration environment overlaid on conf/base (e.g. demo, gpu_24gb).")
@click.option("--gpu-memory-gb", type=click.FloatRange(min=0.1), default=None,
              help="GiB per GPU to check against, instead of the config's hardware.gpu_memory_gb.")
@click.option("--bf16-tflops", type=click.FloatRange(min=0.1), default=None,
              help="Dense bf16 peak of the GPU in TFLOPS (e.g. 989.5 for an H100 SXM), instead of the config's "
                   "hardware.bf16_tflops.")
@click.option("--project-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
def check_config(env: str, gpu_memory_gb: float | None, bf16_tflops: float | None,
                 project_dir: Path | None) -> None:
    """Parameter counts and per-GPU memory estimates of every training stage and of generation."""
    from generatect_kedro.capacity import check_config as run_check
    from generatect_kedro.capacity import summary
    from generatect_kedro.cli import find_project_root

    project = find_project_root(project_dir)
    try:
        report = run_check(project, env, gpu_memory_gb=gpu_memory_gb, bf16_tflops=bf16_tflops)
    except ValueError as error:
        raise click.ClickException(f"configuration {env!r}: {error}") from error
    click.echo(report.render())
    click.echo("")
    if report.failures():
        raise click.ClickException(summary(report))
    click.echo(summary(report))
