"""Converters from the released GenerateCT checkpoints to this package's modules."""

from generatect_kedro.models.convert.ctvit import (
    check_state_dict,
    convert_ctvit_state_dict,
    convert_discriminator_state_dict,
    drop_release_attention_extras,
    expected_state_shapes,
    load_released_ctvit,
    load_state_file,
)

__all__ = [
    "check_state_dict",
    "convert_ctvit_state_dict",
    "convert_discriminator_state_dict",
    "drop_release_attention_extras",
    "expected_state_shapes",
    "load_released_ctvit",
    "load_state_file",
]
