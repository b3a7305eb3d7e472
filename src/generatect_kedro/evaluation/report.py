"""The evaluation report: figures (matplotlib `Figure`s, no pyplot state) and the Markdown that names every number.

Pure functions of the evaluation results, so a test can build a report from constructed numbers and read
them back. Figures are referenced by their file names, which the catalog writes beside `report.md`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FIGURES", "auroc_figure", "hu_histogram_figure", "montage_figure", "render_markdown"]

FIGURES = {"auroc": "utility_auroc.png", "hu": "hu_histograms.png", "montage": "montage.png"}
ROLE_ORDER = ("challenger", "champion")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def auroc_figure(utility: pd.DataFrame):
    """Per-label AUROC bars, one colour per training set (arm), on the real test split."""
    figure = _figure(11, 4)
    ax = figure.add_subplot(1, 1, 1)
    data = utility[(utility["label"] != "mean") & utility["evaluable"]] if len(utility) else utility
    if data is None or not len(data):
        ax.text(0.5, 0.5, "utility experiment: no evaluable label", ha="center", va="center")
        ax.set_axis_off()
        return figure
    labels = [label for label in dict.fromkeys(data["label"])]
    arms = list(dict.fromkeys(data["arm"]))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        part = data[data["arm"] == arm].set_index("label")
        ax.bar(np.arange(len(labels)) + i * width, [part["auroc"].get(label, np.nan) for label in labels],
               width=width, label=arm)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUROC on the real test split")
    ax.set_title("Classifier per training set (utility experiment)")
    ax.legend(fontsize=8, ncols=min(len(arms) + 1, 5))
    figure.tight_layout()
    return figure


def hu_histogram_figure(roles: Mapping[str, Mapping[str, Any]]):
    """Voxel HU distribution of the real test volumes and of each generator's volumes (log scale)."""
    figure = _figure(8, 4)
    ax = figure.add_subplot(1, 1, 1)
    drawn_real = False
    for role in [r for r in ROLE_ORDER if r in roles]:
        histogram = roles[role].get("hu_histogram") or {}
        if not histogram:
            continue
        edges = np.asarray(histogram["edges"])
        centres = (edges[:-1] + edges[1:]) / 2
        if not drawn_real:
            ax.plot(centres, np.maximum(histogram["real"], 1e-7), color="black", linewidth=2, label="real test")
            drawn_real = True
        ax.plot(centres, np.maximum(histogram["generated"], 1e-7), linewidth=1.5, label=f"generated ({role})")
    ax.set_yscale("log")
    ax.set_xlabel("HU")
    ax.set_ylabel("share of voxels")
    ax.set_title("HU histograms, real vs generated")
    if drawn_real:
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def montage_figure(panels: Sequence[Mapping[str, Any]], window: tuple[float, float] = (-1000.0, 1000.0)):
    """Rows of (real middle axial slice, generated middle axial slice) in HU, titled with the prompt."""
    rows = max(len(panels), 1)
    figure = _figure(7, 3.2 * rows)
    if not panels:
        ax = figure.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no generated test volume", ha="center", va="center")
        ax.set_axis_off()
        return figure
    for panel, row in zip(panels, figure.subfigures(rows, 1, squeeze=False)[:, 0]):
        row.suptitle(textwrap.fill(panel.get("prompt", ""), 90), fontsize=7)
        axes = row.subplots(1, 2)
        row.subplots_adjust(top=0.8, bottom=0.02, left=0.02, right=0.98, wspace=0.05)  # room for the prompt
        for ax, key in zip(axes, ("real", "generated")):
            volume = panel.get(key)
            if volume is not None:
                ax.imshow(volume[volume.shape[0] // 2], cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_axis_off()
            ax.set_title(key, fontsize=8)
    return figure


# ---- Markdown -------------------------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _versions(role: Mapping[str, Any]) -> str:
    v = role.get("versions") or {}
    return f"transformer v{v.get('transformer', '?')}, superres v{v.get('superres', '?')}"


def _section_fidelity(roles: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys = sorted({k for role in roles.values() for k in (role.get("frechet") or {}) if k != "unavailable"})
    lines = ["## Fidelity: Fréchet distances, generated vs real test volumes", "",
             "Lower is better. FID is over axial slice features, FVD over whole-volume features; each row names "
             "the network that produced the features. Values from different networks are not comparable.", ""]
    rows = []
    for key in keys:
        metric, network = key.split("/", 1)
        row = [metric, network]
        extractor = ""
        for role in [r for r in ROLE_ORDER if r in roles]:
            entry = (roles[role].get("frechet") or {}).get(key) or {}
            row.append(_fmt(entry.get("value")))
            extractor = extractor or entry.get("extractor", "")
            if entry.get("reason"):
                row[-1] += f" ({entry['reason']})"
        rows.append(row + [extractor])
    lines += _table(["metric", "features", *[r for r in ROLE_ORDER if r in roles], "feature network"], rows)
    for role in roles.values():
        for key, why in ((role.get("frechet") or {}).get("unavailable") or {}).items():
            lines.append(f"- {key} features not computed: {why}")
    return lines + [""]


def _section_alignment(roles: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["## Text alignment", "",
             "The real-data classifier scores each generated volume; AUROC is against the labels of the prompt "
             "that produced it. The ceiling is the same classifier on the real test volumes against the labels "
             "of their own prompts. Means are over the labels evaluable in both sets; the ratio is "
             "(generated − 0.5) / (real − 0.5): 1 = as recognisable as real, 0 = chance.", ""]
    present = [r for r in ROLE_ORDER if r in roles]
    rows = []
    for key in ("mean_auroc_generated", "mean_auroc_real", "auroc_ratio", "common_labels"):
        rows.append([key, *[_fmt((roles[r].get("text_alignment") or {}).get(key)) for r in present]])
    lines += _table(["text alignment", *present], rows)
    challenger = roles.get("challenger") or {}
    generated = {row["label"]: row for row in (challenger.get("text_alignment") or {}).get("generated_table", [])}
    real = {row["label"]: row for row in (challenger.get("text_alignment") or {}).get("real_table", [])}
    per_label = [[label, _fmt(g["auroc"]), _fmt(real.get(label, {}).get("auroc")), g["positives"]]
                 for label, g in generated.items() if g.get("evaluable")]
    if per_label:
        lines += ["Per label (challenger):", ""]
        lines += _table(["label", "AUROC generated", "AUROC real (ceiling)", "generated positives"], per_label)
    return lines


def _section_hu(roles: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["## HU sanity", "", f"![HU histograms]({FIGURES['hu']})", ""]
    for role in [r for r in ROLE_ORDER if r in roles]:
        sanity = roles[role].get("hu_sanity") or {}
        if "reason" in sanity:
            lines += [f"- {role}: not measured: {sanity['reason']}"]
            continue
        lines += [f"**{role}** ({_versions(roles[role])}): {_fmt(sanity.get('flagged_volumes'))} of "
                  f"{_fmt(sanity.get('generated_volumes'))} generated volumes outside the real range "
                  f"(flagged fraction {_fmt(sanity.get('flagged_fraction'))}).", ""]
        real_median, gen_median = sanity.get("real_median") or {}, sanity.get("generated_median") or {}
        rows = [[key, _fmt(real_median.get(key), 1), _fmt(gen_median.get(key), 1)]
                for key in real_median if key.endswith(("/fraction", "/mean"))]
        lines += _table(["tissue statistic (median over volumes)", "real", "generated"], rows)
        for flag in (sanity.get("flags") or [])[:10]:
            lines.append(f"- `{flag['volume']}`: {flag['reason']}")
        lines.append("")
    return lines


def _section_utility(utility: pd.DataFrame) -> list[str]:
    lines = ["## Downstream utility (supplementary Tables 1–2)", "",
             "The same classifier (configs and seed) trained on each set, scored on the same real test split.", ""]
    if not len(utility):
        return lines + ["Not run (evaluation.utility.enabled is false).", ""]
    means = utility[utility["label"] == "mean"]
    rows = [[r.arm, r.real_volumes, r.synthetic_volumes, _fmt(r.auroc), _fmt(r.average_precision), r.reason]
            for r in means.itertuples(index=False)]
    lines += _table(["training set", "real", "synthetic", "mean AUROC", "mean AP", "labels"], rows)
    if "real_plus_unseen" not in set(means["arm"]):
        lines += ["No real + unseen-combination arm: no combination of `utility.unseen.size` evaluated labels is "
                  "absent from the training reports, or `utility.unseen.enabled` is off.", ""]
    return lines + [f"![AUROC per label and training set]({FIGURES['auroc']})", ""]


def render_markdown(results: Mapping[str, Any], utility: pd.DataFrame, classifier: Mapping[str, Any],
                    stage_evidence: Mapping[str, Any], metrics: Mapping[str, float]) -> str:
    """The whole report; `metrics` are the flat headline numbers (also in metrics.json and on the versions)."""
    roles = results.get("roles") or {}
    lines = ["# GenerateCT evaluation report", ""]
    for role in [r for r in ROLE_ORDER if r in roles]:
        lines.append(f"- **{role}**: {_versions(roles[role])}; {roles[role].get('generated_volumes')} generated "
                     "test volumes")
    for role, why in (results.get("skipped") or {}).items():
        lines.append(f"- {role}: not evaluated: {why}")
    lines += [f"- real test volumes: {results.get('real_test_volumes')} (splits: "
              f"{', '.join(results.get('test_splits') or [])}); classifier trained on {classifier.get('train_volumes')}"
              f" real volumes, input {classifier.get('input_shape')}", ""]
    lines += ["## Headline metrics", ""]
    lines += _table(["metric", "value"], [[f"`{k}`", _fmt(v, 4)] for k, v in metrics.items()])
    lines += ["## Abnormality classifier on real test volumes (report labels)", "",
              f"Mean AUROC {_fmt(classifier.get('mean_auroc'))}, mean AP {_fmt(classifier.get('mean_average_precision'))}"
              f" over {classifier.get('evaluable_labels')} evaluable labels "
              "(a label needs positives in training and both classes in the test set).", ""]
    rows = [[r["label"], r["positives"], _fmt(r["auroc"]), _fmt(r["average_precision"])]
            for r in classifier.get("table") or [] if r.get("evaluable")]
    lines += _table(["label", "test positives", "AUROC", "AP"], rows)
    lines += _section_fidelity(roles) + _section_alignment(roles) + _section_hu(roles) + _section_utility(utility)
    lines += ["## Stage evidence of the challenger", ""]
    for name, value in stage_evidence.items():
        lines.append(f"- `{name}`: {_fmt(value, 4)}")
    lines += ["", "## Generated volumes", "", f"![real vs generated, same prompt]({FIGURES['montage']})", ""]
    return "\n".join(lines)
