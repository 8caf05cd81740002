"""Parameter names as the user wrote the model: without the parts that wrappers insert into ``named_parameters()``."""

from __future__ import annotations

import re

__all__ = ["clean_parameter_name"]

#: Lightning's ``_forward_module.``, FSDP1's ``_fsdp_wrapped_module.``, activation checkpointing's
#: ``_checkpoint_wrapped_module.`` and ``torch.compile``'s ``_orig_mod.``.
_WRAPPER_PARTS = re.compile(
    r"(?:^|(?<=\.))(?:_forward_module|_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\."
)


def clean_parameter_name(name: str) -> str:
    """``name`` without the wrapper parts (``_orig_mod.net.0.weight`` -> ``net.0.weight``)."""
    return _WRAPPER_PARTS.sub("", name)
