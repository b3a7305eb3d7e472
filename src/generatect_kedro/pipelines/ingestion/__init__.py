"""Ingestion: DICOM exports or CT-RATE → int16 HU NIfTI volumes, manifest, metadata, reports, quarantine."""

from generatect_kedro.pipelines.ingestion.pipeline import create_ctrate_pipeline, create_pipeline

# `generatect ingest` without a reports table runs every DICOM node except the reports one.
DICOM_ONLY_NODES = (
    "plan_dicom_series",
    "convert_dicom_series",
    "build_volume_manifest",
    "extract_volume_metadata",
    "collect_ingestion_quarantine",
)

__all__ = ["DICOM_ONLY_NODES", "create_ctrate_pipeline", "create_pipeline"]
