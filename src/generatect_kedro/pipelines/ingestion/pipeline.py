"""Ingestion pipelines. `create_pipeline` reads a DICOM export; `create_ctrate_pipeline` reads the CT-RATE layout.

Both write the same datasets (`hu_volumes`, `volume_manifest`, `volume_metadata`, `reports`,
`ingestion_quarantine`), so only one of them may be part of any one run.
"""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.ingestion import nodes


def create_pipeline(**kwargs: Any) -> Pipeline:
    return Pipeline([
        Node(nodes.plan_dicom_series, ["raw_dicom", "params:ingestion"], ["dicom_series_plan", "dicom_file_quarantine"],
             name="plan_dicom_series"),
        Node(nodes.convert_dicom_series, ["raw_dicom", "dicom_series_plan", "params:ingestion"], "hu_volumes",
             name="convert_dicom_series"),
        Node(nodes.build_volume_manifest, ["hu_volumes", "dicom_series_plan"],
             ["volume_manifest", "conversion_quarantine"], name="build_volume_manifest"),
        Node(nodes.extract_volume_metadata, "dicom_series_plan", "volume_metadata", name="extract_volume_metadata"),
        Node(nodes.pseudonymise_reports, ["raw_reports", "params:ingestion"], "reports", name="pseudonymise_reports"),
        Node(nodes.collect_ingestion_quarantine, ["dicom_file_quarantine", "conversion_quarantine"],
             "ingestion_quarantine", name="collect_ingestion_quarantine"),
    ])


def create_ctrate_pipeline(**kwargs: Any) -> Pipeline:
    return Pipeline([
        Node(nodes.plan_ctrate_volumes, ["raw_ctrate_volumes", "raw_ctrate_metadata", "params:ingestion"],
             ["ctrate_volume_plan", "ctrate_file_quarantine"], name="plan_ctrate_volumes"),
        Node(nodes.convert_ctrate_volumes, ["raw_ctrate_volumes", "ctrate_volume_plan", "params:ingestion"],
             "hu_volumes", name="convert_ctrate_volumes"),
        Node(nodes.build_volume_manifest, ["hu_volumes", "ctrate_volume_plan"],
             ["volume_manifest", "conversion_quarantine"], name="build_ctrate_volume_manifest"),
        Node(nodes.extract_volume_metadata, "ctrate_volume_plan", "volume_metadata",
             name="extract_ctrate_volume_metadata"),
        Node(nodes.pseudonymise_ctrate_reports, ["raw_ctrate_reports", "params:ingestion"], "reports",
             name="pseudonymise_ctrate_reports"),
        Node(nodes.collect_ingestion_quarantine, ["ctrate_file_quarantine", "conversion_quarantine"],
             "ingestion_quarantine", name="collect_ctrate_ingestion_quarantine"),
    ])
