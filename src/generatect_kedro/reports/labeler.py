"""Rule-based extraction of the 18 CT-RATE labels from report text (a small, sentence-scoped NegEx).

Used to label cohorts whose reports come without labels and, later, to score generated volumes against
their prompts, so it errs on the careful side:

1. The text is lower-cased and split into sentences (``.``, ``;``, ``!``, ``?``, new lines; decimal points
   are kept) and then into clauses at scope terminators ("but", "however", "although", "except", "which",
   "whereas", ":").
2. Pseudo-negations that do not negate ("no significant change in", "cannot be excluded", "partially
   resolved"…) are blanked out before cues are searched, keeping character positions.
3. Each label has a few finding patterns. A mention is **negated** if a pre-negation cue ("no", "not",
   "without", "absence of", "free of", "negative for", "resolved"…) starts before the end of the mention
   within the clause and at most `PRE_WINDOW_WORDS` words before it, or if a post-negation cue
   ("is not seen/observed/detected", "absent", "has resolved"…) follows it in the same comma-separated
   segment within `POST_WINDOW_WORDS` words. "No pleural or pericardial effusion" negates both findings
   because both mentions follow the cue.
4. A label is 1 when at least one mention anywhere in the text is not negated.

`label_reports` joins the given text columns, labels each distinct text once and returns 0/1 columns
named by `LABEL_COLUMNS` (snake_case of `CT_RATE_LABELS`, same order).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from generatect_kedro.labels import CT_RATE_LABELS

PRE_WINDOW_WORDS = 8
POST_WINDOW_WORDS = 10


def snake_case(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


LABEL_COLUMNS: tuple[str, ...] = tuple(snake_case(label) for label in CT_RATE_LABELS)

def _gap(n: int) -> str:
    """Up to n plain words (no commas) between the parts of a multi-word finding."""
    return rf"(?:[\w-]+\s+){{0,{n}}}"


_CALC = r"(?:calcif\w*|atherom\w*|atheroscl\w*|plaques?)"
_NON_CORONARY_VESSEL = (
    r"(?:aort(?:a|ic)\b(?!\s+valve)|(?<!coronary\s)arter(?:y|ies|ial)\b|vascular|vessels?|carotid\w*|"
    r"subclavian|iliac|brachiocephalic|supra-?aortic)"
)
_EXTRA_PULMONARY = r"\b(?:thyroid|adrenal|liver|hepatic|renal|kidney|breast|splen\w*|pancrea\w*|hepato\w*)\b"
_LUNG = r"\b(?:lung|lungs|pulmonary|lobe|lobes|lobar|parenchyma\w*|subpleural|pleural)\b"


@dataclass(frozen=True)
class Finding:
    """Patterns of one label; mentions in a clause matching `unless` (and not `unless_override`) are skipped."""

    patterns: tuple[str, ...]
    unless: str | None = None
    unless_override: str | None = None


FINDINGS: dict[str, Finding] = {
    "Medical material": Finding(
        (
            r"\b(?:pacemakers?|catheters?|stents?|ports?|port-a-cath|prosthes[ie]s|prosthetic|implants?|"
            r"endoprosthes[ie]s|drains?|cannula[es]?|electrodes?|coils?|clips?)\b",
            r"\b(?:endotracheal|tracheostomy|chest|thoracostomy|nasogastric|feeding|drainage|ng)\s+tubes?\b",
            r"\b(?:sternotomy|sternal|surgical|cerclage)\s+(?:wires?|sutures?|materials?)\b",
            r"\bmedical\s+(?:material|device)s?\b",
        )
    ),
    "Arterial wall calcification": Finding(
        (
            rf"\b{_CALC}\s+{_gap(7)}{_NON_CORONARY_VESSEL}",
            rf"\b{_NON_CORONARY_VESSEL}\s+{_gap(4)}{_CALC}",
            r"\b(?:atherosclerosis|atherosclerotic\s+(?:[\w-]+\s+)?(?:calcifications?|plaques?|changes?))\b",
            r"\bvascular\s+calcifications?\b",
        ),
        unless=r"\bcoronar",
        unless_override=_NON_CORONARY_VESSEL,
    ),
    "Cardiomegaly": Finding(
        (
            r"\bcardiomegal\w*",
            r"\bcardiac\s+enlargement\b",
            r"\b(?:enlarged|increased|large)\s+(?:[\w-]+\s+)?(?:heart|cardiac)\b",
            r"\b(?:heart|cardiac)\s+(?:size\s+|silhouette\s+|contour\s+|dimensions?\s+)?"
            r"(?:is\s+|was\s+|are\s+|were\s+|appears?\s+)?(?:mildly\s+|moderately\s+|markedly\s+|slightly\s+|"
            r"significantly\s+)?(?:enlarged|increased|large)\b",
            r"\bcardiothoracic\s+ratio\s+(?:is\s+|was\s+)?increased\b",
        )
    ),
    "Pericardial effusion": Finding(
        (
            rf"\bpericardial\s+{_gap(2)}(?:effusions?|fluid)\b",
            r"\bpericardial[- ]effusion",
            r"\b(?:effusion|fluid)\s+(?:in|within)\s+the\s+pericardi\w*",
            r"\bhemopericardium\b",
        )
    ),
    "Coronary artery wall calcification": Finding(
        (
            rf"\bcoronar\w*\s+{_gap(4)}{_CALC}",
            rf"\b{_CALC}\s+{_gap(8)}coronar\w*",
        )
    ),
    "Hiatal hernia": Finding(
        (
            r"\bhiat(?:al|us)\s+hernia\w*",
            rf"\bhernia\w*\s+{_gap(4)}hiatus\b",
            r"\bparaesophageal\s+hernia\w*",
        )
    ),
    "Lymphadenopathy": Finding(
        (
            r"\b(?:lymph)?adenopath\w*",
            rf"\b(?:enlarged|pathologic(?:al)?|bulky|conglomerated?|enlarging)\s+{_gap(2)}lymph\s+nodes?\b",
            rf"\blymph\s+nodes?\s+{_gap(6)}(?:enlarged|of\s+pathologic|in\s+pathologic|with\s+pathologic|"
            r"pathologic(?:al)?\s+(?:size|dimension)|increased\s+in\s+size)",
        )
    ),
    "Emphysema": Finding(
        (r"\b(?<!subcutaneous\s)(?<!mediastinal\s)(?<!soft\stissue\s)emphysem\w*",),
        unless=r"\bsubcutaneous\s+(?:and\s+\w+\s+)?emphysem",
        unless_override=r"(?:centri|para|pan)\w*\s+emphysem|pulmonary\s+emphysem|emphysematous\s+(?:change|area|lung)",
    ),
    "Atelectasis": Finding(
        (
            r"atelecta\w*",
            r"\b(?:lung|lobe|lobar|segmental)\s+collapse\b",
            r"\bcollapsed?\s+(?:lung|lobe)\b",
        )
    ),
    "Lung nodule": Finding(
        (
            r"\b(?:micro)?nodul(?:e|es|i)\b",
            r"\bnodular\s+(?:opacit\w*|densit\w*|lesions?|infiltrat\w*|consolidat\w*|ground)",
        ),
        unless=_EXTRA_PULMONARY,
        unless_override=_LUNG,
    ),
    "Lung opacity": Finding(
        (
            r"\bground[- ]?glass\b",
            r"\bopacit(?:y|ies)\b",
            r"\binfiltrat\w*",
            rf"\b(?:increased|increase\s+in)\s+{_gap(1)}densit\w*",
            r"\bdensity\s+increases?\b",
        ),
        unless=r"\b(?:breast|bone|thyroid|liver|hepatic|soft\s+tissue)\b",
        unless_override=_LUNG,
    ),
    "Pulmonary fibrotic sequela": Finding(
        (
            r"\bfibro(?:sis|tic)\b",
            r"\bfibro-?atelecta\w*",
            r"\bfibrous\s+(?:bands?|strands?|tract\w*|densit\w*|changes?|scar\w*)\b",
            r"\bsequela\w*",
            r"\bparenchymal\s+(?:bands?|scar\w*)\b",
            r"\bscar(?:ring|s)?\b",
        )
    ),
    "Pleural effusion": Finding(
        (
            rf"\bpleural\s+{_gap(2)}(?:effusions?|fluid)\b",
            r"\bpleural[- ]effusion",
            rf"\bpleural\s+(?:spaces?|cavit\w*|sinus\w*)\s+{_gap(4)}(?:effusions?|fluid)\b",
            r"\b(?:effusion|fluid)\s+(?:in|within)\s+the\s+(?:\w+\s+)?pleural\b",
            r"\b(?:bilateral|right|left|right-sided|left-sided)\s+effusions?\b",
            r"\bhydrothorax\b",
        )
    ),
    "Mosaic attenuation pattern": Finding((r"\bmosaic\w*",)),
    "Peribronchial thickening": Finding(
        (
            rf"\b(?:peri)?bronch(?:ial|ovascular)\s+{_gap(1)}(?:wall\s+)?thicken\w*",
            rf"\bthicken\w*\s+(?:of\s+)?(?:the\s+)?(?:peri)?bronch(?:ial|ovascular)\b",
            rf"\bbronchial\s+walls?\s+{_gap(2)}thickened\b",
        )
    ),
    "Consolidation": Finding((r"\bconsolidat\w*",)),
    "Bronchiectasis": Finding((r"\bbronchiecta\w*",)),
    "Interlobular septal thickening": Finding(
        (
            r"\b(?<!interatrial\s)(?<!interventricular\s)(?<!atrial\s)septal\s+(?:[\w-]+\s+)?thicken\w*",
            rf"\bthicken\w*\s+(?:of\s+)?(?:the\s+)?interlobular\s+sept\w*",
            rf"\binterlobular\s+sept\w*\s+{_gap(3)}thicken\w*",
        )
    ),
}
if tuple(FINDINGS) != CT_RATE_LABELS:
    raise RuntimeError("FINDINGS must follow CT_RATE_LABELS order")

_SENTENCE_RE = re.compile(r"(?<!\d)\.|\.(?!\d)|[;!?\n\r]+")
_CLAUSE_RE = re.compile(
    r"\b(?:but|however|although|though|except|whereas|which|apart\s+from|aside\s+from|other\s+than)\b|:"
)
_COMMA_RE = re.compile(r",")
_PSEUDO_RE = re.compile(
    r"\b(?:no|without)\s+(?:significant\s+|notable\s+|marked\s+|interval\s+|obvious\s+)*"
    r"(?:change|changes|increase|decrease|progression|regression|difference)\b"
    r"|\bnot\s+(?:only|significantly\s+changed|changed|resolved|completely\s+resolved|been\s+resolved|"
    r"fully\s+resolved)\b"
    r"|\b(?:can|could|may)\s*not\s+be\s+(?:excluded|ruled\s+out)\b|\bcannot\s+be\s+(?:excluded|ruled\s+out)\b"
    r"|\bnot\s+(?:be\s+)?(?:excluded|ruled\s+out)\b"
    r"|\b(?:partially|partly|incompletely|almost\s+completely)\s+resolv\w*"
)
_PRE_RE = re.compile(
    r"\b(?:no|not|without|none|nor|neither|absence\s+of|absent|free\s+of|negative\s+for|"
    r"no\s+evidence\s+of|no\s+signs?\s+of|rule\s+out|ruled\s+out|resolved|resolution\s+of|disappearance\s+of)\b"
)
_POST_RE = re.compile(
    r"\b(?:(?:is|are|was|were|has\s+been|have\s+been|could|can|did)\s+)?not\s+(?:been\s+)?"
    r"(?:seen|observed|detected|identified|present|evident|visualized|visualised|noted|appreciated|found|"
    r"demonstrated|apparent|visible|shown|determined|monitored|encountered)\b"
    r"|\b(?:is|are|was|were)\s+absent\b|\babsent\b"
    r"|\b(?:has|have)?\s*(?:completely\s+|totally\s+)?(?:resolved|disappeared)\b"
    r"|\bno\s+longer\s+(?:seen|visible|present|observed|detected)\b"
    r"|\b(?:was|were|is|are)\s+(?:ruled\s+out|excluded)\b"
)
_WORD_RE = re.compile(r"\S+")
_COMPILED = {
    label: (
        re.compile("|".join(f"(?:{p})" for p in finding.patterns)),
        re.compile(finding.unless) if finding.unless else None,
        re.compile(finding.unless_override) if finding.unless_override else None,
    )
    for label, finding in FINDINGS.items()
}


def _blank(match: re.Match) -> str:
    return "_" * len(match.group(0))


def _words_between(text: str, start: int, end: int) -> int:
    return len(_WORD_RE.findall(text[start:end])) if end > start else 0


def _spans(text: str, splitter: re.Pattern) -> list[tuple[int, int]]:
    bounds, last = [], 0
    for match in splitter.finditer(text):
        bounds.append((last, match.start()))
        last = match.end()
    bounds.append((last, len(text)))
    return [(a, b) for a, b in bounds if text[a:b].strip()]


def _is_negated(clause: str, masked: str, start: int, end: int) -> bool:
    for cue in _PRE_RE.finditer(masked, 0, end):
        inside = cue.start() >= start
        if inside or _words_between(masked, cue.end(), start) <= PRE_WINDOW_WORDS:
            return True
    segments = _spans(clause, _COMMA_RE)
    segment_end = next((b for a, b in segments if a <= start < b), len(clause))
    for cue in _POST_RE.finditer(masked, end):
        if cue.start() <= segment_end and _words_between(masked, end, cue.start()) <= POST_WINDOW_WORDS:
            return True
    return False


def _clause_labels(clause: str, labels: Sequence[str], positives: set[str]) -> None:
    masked = _PSEUDO_RE.sub(_blank, clause)
    for label in labels:
        pattern, unless, override = _COMPILED[label]
        if label in positives:
            continue
        if unless is not None and unless.search(clause) and not (override and override.search(clause)):
            continue
        for mention in pattern.finditer(clause):
            if not _is_negated(clause, masked, mention.start(), mention.end()):
                positives.add(label)
                break


def label_text(text: str | None) -> dict[str, int]:
    """0/1 for each CT-RATE label (keys: `LABEL_COLUMNS`) from one report text."""
    positives: set[str] = set()
    if text and isinstance(text, str):
        lowered = text.lower()
        candidates = [label for label, (pattern, _, _) in _COMPILED.items() if pattern.search(lowered)]
        if candidates:
            for s_start, s_end in _spans(lowered, _SENTENCE_RE):
                sentence = lowered[s_start:s_end]
                for c_start, c_end in _spans(sentence, _CLAUSE_RE):
                    _clause_labels(sentence[c_start:c_end], candidates, positives)
    return {snake_case(label): int(label in positives) for label in CT_RATE_LABELS}


def join_text(df: pd.DataFrame, text_columns: Sequence[str]) -> pd.Series:
    """The report text the labeler reads: the given columns joined as separate sentences."""
    missing = [c for c in text_columns if c not in df.columns]
    if missing:
        raise KeyError(f"text columns not in the table: {missing}")
    parts = [df[c].astype("object").where(df[c].notna(), "").astype(str).str.strip() for c in text_columns]
    joined = parts[0] if parts else pd.Series("", index=df.index)
    for part in parts[1:]:
        joined = joined + ".\n" + part
    return joined


def label_reports(df: pd.DataFrame, text_columns: Sequence[str] = ("findings", "impression")) -> pd.DataFrame:
    """18 columns of 0/1 labels (`LABEL_COLUMNS`), indexed like `df`; each distinct text is labelled once."""
    text = join_text(df, list(text_columns))
    unique = pd.unique(text.to_numpy(dtype=object))
    table = pd.DataFrame([label_text(t) for t in unique], index=unique, columns=list(LABEL_COLUMNS))
    if table.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in LABEL_COLUMNS}, index=df.index)
    out = table.reindex(text.to_numpy(dtype=object))
    out.index = df.index
    return out.astype("int64")
