"""`generatect …`: the commands users type. Heavy imports happen inside each command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

LOG = logging.getLogger("generatect")


def _offline_environment() -> None:
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "true",
        "KEDRO_DISABLE_TELEMETRY": "true",
    }.items():
        os.environ.setdefault(key, value)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder upwards holding a Kedro `pyproject.toml` (the project's commands run there)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.kedro]" in pyproject.read_text(encoding="utf-8"):
            return folder
    raise click.ClickException(
        f"no Kedro project found at or above {here}; run inside the generatect-kedro checkout "
        "or pass --project-dir"
    )


def run_kedro(project_dir: Path, pipeline: str, env: str | None, runtime_params: dict | None = None,
              node_names: list[str] | None = None) -> None:
    """Run a project pipeline in-process, exactly like `kedro run` (hooks, MLflow run and all)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_dir)
    previous = Path.cwd()
    os.chdir(project_dir)  # catalog paths and the SQLite tracking URI are relative to the project root
    try:
        with KedroSession.create(project_path=project_dir, env=env, runtime_params=runtime_params or {}) as session:
            session.run(pipeline_names=[pipeline], node_names=node_names)
    finally:
        os.chdir(previous)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """generatect-kedro: train, audit and use GenerateCT."""
    _offline_environment()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command("demo-data")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write DIR/dicom/… and DIR/reports.csv into.")
@click.option("--patients", type=click.IntRange(min=1), default=24, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--broken/--no-broken", default=False, show_default=True,
              help="Add deliberately broken studies that ingestion must quarantine.")
@click.option("--matrix", type=click.IntRange(min=16), default=None,
              help="In-plane matrix of every series (default: the demo config's).")
def demo_data(out_dir: Path, patients: int, seed: int, broken: bool, matrix: int | None) -> None:
    """Write the synthetic chest-CT phantom cohort (DICOM series + radiology reports)."""
    from dataclasses import replace

    from generatect_kedro.phantom.cohort import PhantomCohortConfig, write_demo_cohort

    config = PhantomCohortConfig()
    if matrix is not None:
        config = replace(config, matrix_choices=(matrix,))
    summary = write_demo_cohort(out_dir, patients=patients, seed=seed, broken=broken, config=config)
    click.echo(
        f"wrote {summary.patients} patients, {summary.studies} studies, {summary.files} files"
        f" ({summary.broken_cases} broken cases) to {out_dir}"
    )


@main.command()
@click.argument("dicom_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Writes OUT/volumes/*.nii.gz, OUT/manifest.csv, OUT/quarantine.csv.")
@click.option("--reports", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Reports CSV (study_id, findings, impression) to pseudonymise beside the volumes.")
@click.option("--env", default=None, help="Kedro configuration environment (default: local).")
@click.option("--project-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
def ingest(dicom_dir: Path, out_dir: Path, reports: Path | None, env: str | None, project_dir: Path | None) -> None:
    """Ingest any folder of DICOM files into HU NIfTI volumes, a manifest and a quarantine table."""
    project = find_project_root(project_dir)
    params = {"ingest_dicom_dir": str(dicom_dir.resolve()), "ingest_out_dir": str(out_dir.resolve())}
    from generatect_kedro.pipelines.ingestion import DICOM_ONLY_NODES

    nodes = None
    if reports is not None:
        params["ingest_reports"] = str(reports.resolve())
    else:
        nodes = list(DICOM_ONLY_NODES)
    run_kedro(project, "ingestion", env, runtime_params=params, node_names=nodes)
    import pandas as pd

    manifest = pd.read_csv(out_dir / "manifest.csv")
    quarantine = pd.read_csv(out_dir / "quarantine.csv")
    click.echo(
        f"accepted {len(manifest)} series ({int(manifest['file_count'].sum())} files); "
        f"quarantined {len(quarantine)} items ({int(quarantine['file_count'].sum())} files) -> {out_dir}"
    )


def _register_commands() -> None:
    from generatect_kedro.commands.check_config import check_config
    from generatect_kedro.commands.generate import generate
    from generatect_kedro.commands.lineage import lineage
    from generatect_kedro.commands.promote import promote
    from generatect_kedro.commands.register_generator import register_generator

    for command in (check_config, generate, lineage, promote, register_generator):
        main.add_command(command)


_register_commands()

# Kedro loads `<package>.cli.cli` as project-specific `kedro` commands; ours live under `generatect`.
cli = click.Group(name="generatect-kedro-project")

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
