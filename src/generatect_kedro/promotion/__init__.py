"""Model promotion through evaluation gates: ``promote``, ``rollback``, ``promotion_history``.

See `promotion.gates` for where a version's metrics come from, `promotion.core` for what is recorded and
`promotion.lock` for how concurrent promotions are serialised.
"""

from generatect_kedro.promotion.core import (
    HISTORY_EXPERIMENT,
    MODEL_NAMES,
    PromotionError,
    PromotionResult,
    model_name,
    promote,
    promotion_history,
    rollback,
)
from generatect_kedro.promotion.gates import Gate, GateResult, MetricLookup, evaluate_gates, format_table, parse_gates
from generatect_kedro.promotion.lock import PromotionLockTimeout, lock_path

__all__ = [
    "HISTORY_EXPERIMENT",
    "MODEL_NAMES",
    "Gate",
    "GateResult",
    "MetricLookup",
    "PromotionError",
    "PromotionLockTimeout",
    "PromotionResult",
    "evaluate_gates",
    "format_table",
    "lock_path",
    "model_name",
    "parse_gates",
    "promote",
    "promotion_history",
    "rollback",
]
