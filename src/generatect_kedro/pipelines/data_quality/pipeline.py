"""Data quality: GX suites on metadata, reports and manifest → docs, quarantine, stop rule → cohort."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from generatect_kedro.pipelines.data_quality import nodes


def create_pipeline(**kwargs) -> Pipeline:  # noqa: ARG001 - kedro's signature
    validations = ["metadata_validation", "reports_validation", "manifest_validation", "cross_table_validation"]
    return Pipeline(
        [
            Node(nodes.validate_metadata, ["volume_metadata", "params:data_quality"], "metadata_validation", name="validate_metadata"),
            Node(nodes.validate_reports, ["reports", "params:data_quality"], "reports_validation", name="validate_reports"),
            Node(nodes.validate_manifest, ["volume_manifest", "params:data_quality"], "manifest_validation", name="validate_manifest"),
            Node(
                nodes.cross_check_tables,
                ["volume_metadata", "reports", "volume_manifest", "params:data_quality"],
                "cross_table_validation",
                name="cross_check_tables",
            ),
            Node(
                nodes.render_quality_docs,
                validations,
                ["quality_docs_md", "quality_docs_html", "quality_summary", "quality_metrics"],
                name="render_quality_docs",
            ),
            Node(
                nodes.gate_quality,
                [*validations, "volume_manifest", "quality_summary"],
                "quality_quarantine",
                name="gate_quality",
            ),
            Node(
                nodes.build_cohort,
                ["volume_metadata", "reports", "volume_manifest", "quality_quarantine", "params:data_quality"],
                "cohort",
                name="build_cohort",
            ),
        ],
        tags="data_quality",
    )
