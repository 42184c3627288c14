"""A model's weights as the bytes a weights file would hold (sizes on disk)."""

from __future__ import annotations

import io
from typing import Any

import torch
from safetensors.torch import save

__all__ = ["state_dict_bytes"]


def state_dict_bytes(model: Any) -> bytes:
    """The model's state_dict serialised as safetensors (what a weights file would hold).

    A quantized model (packed int8 weights, quantized tensors, e.g. from
    ``torch.ao.quantization.quantize_dynamic``) cannot be stored in safetensors: its
    state_dict is serialised with ``torch.save`` instead, the size of its ``.pt`` file.
    """
    state = model.state_dict()
    if all(isinstance(v, torch.Tensor) and not v.is_quantized for v in state.values()):
        return bytes(save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
