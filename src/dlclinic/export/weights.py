"""A model's weights as the bytes a safetensors weights file would hold (sizes on disk)."""

from __future__ import annotations

from typing import Any

from safetensors.torch import save

__all__ = ["state_dict_bytes"]


def state_dict_bytes(model: Any) -> bytes:
    """The model's state_dict serialised as safetensors (what a weights file would hold)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return bytes(save(state))
