"""Logits and penultimate-layer embeddings of a torch model, in one pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from dlclinic.core.case import usable_inputs
from dlclinic.core.inference import eval_mode, first_output, input_tensor, model_input_spec

__all__ = ["logits_and_embeddings"]


def _last_linear(model: Any) -> nn.Linear | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


def logits_and_embeddings(model: Any, x: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate embeddings (input of the last ``nn.Linear``) of a torch model, in eval mode."""
    last = _last_linear(model)
    captured: list[Any] = []
    handle = last.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0])) if last is not None else None
    dtype, device = model_input_spec(model)
    logits, embs = [], []
    try:
        with eval_mode(model), torch.inference_mode():
            for i in range(0, len(x), batch_size):
                captured.clear()
                out = first_output(model(input_tensor(usable_inputs(x[i : i + batch_size]), dtype, device)))
                logits.append(out.float().cpu().numpy())
                embs.append((first_output(captured[-1]) if captured else out).float().flatten(1).cpu().numpy())
    finally:
        if handle is not None:
            handle.remove()
    return np.concatenate(logits), np.concatenate(embs)
