"""Synthetic chest-CT phantom: anatomy, the 18 CT-RATE abnormalities, reports, and the demo cohort."""

from generatect_kedro.phantom.abnormalities import Finding, render_chest, sample_finding, sample_findings
from generatect_kedro.phantom.anatomy import ChestAnatomy, build_chest, sample_anatomy

__all__ = ["ChestAnatomy", "Finding", "build_chest", "render_chest", "sample_anatomy", "sample_finding",
           "sample_findings"]
