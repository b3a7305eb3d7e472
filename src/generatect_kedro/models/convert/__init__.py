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
from generatect_kedro.models.convert.maskgit import *  # noqa: F401,F403 (the MaskGIT converter's __all__)
from generatect_kedro.models.convert.superres import *  # noqa: F401,F403 (the super-resolution converter's __all__)

__all__ = [
    "check_state_dict",
    "convert_ctvit_state_dict",
    "convert_discriminator_state_dict",
    "drop_release_attention_extras",
    "expected_state_shapes",
    "load_released_ctvit",
    "load_state_file",
]
