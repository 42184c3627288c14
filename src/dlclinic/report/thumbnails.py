"""Small inline PNG thumbnails of image rows, for ``CheckResult.details["images"]``.

A spec is a dict ``{"title": str, "split": str, "indices": [int, ...], "captions": [str, ...]}``
with an optional ``"heatmaps": [[[float, ...], ...], ...]`` (one ``H×W`` map in 0..1 per
index, e.g. an attribution map) drawn over the image in red, opacity proportional to the value;
each index is a row of ``case.splits[split].x`` shaped ``H×W``, ``1×H×W``, ``3×H×W`` (or
channels-last ``H×W×1``/``H×W×3``). Each image is min-max scaled to 0..255 on its own,
resized with nearest-neighbour so its longer side is about :data:`TARGET` pixels, and
encoded as a ``data:image/png;base64,...`` URI.

Example:
    >>> import numpy as np
    >>> uri = png_data_uri(np.eye(8, dtype="float32"))
    >>> uri.startswith("data:image/png;base64,")
    True
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from dlclinic.core.case import Case

__all__ = ["MAX_IMAGES", "TARGET", "png_data_uri", "thumbnails"]

TARGET = 56
MAX_IMAGES = 48


def _to_hwc(x: np.ndarray) -> np.ndarray:
    """One sample as an ``H×W`` or ``H×W×3`` array; raises ``ValueError`` for other shapes."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        if x.shape[0] in (1, 3):  # channels-first (also assumed when ambiguous, e.g. 3×3×3)
            x = np.moveaxis(x, 0, -1)
        if x.shape[-1] == 3:
            return x
        return x[..., 0]  # one channel, or an unknown count: show the first channel
    raise ValueError(f"expected an image shaped H×W, 1×H×W or 3×H×W, found {tuple(x.shape)}")


def _overlay(scaled: Any, heatmap: Any) -> Any:
    """Blend a red heat map (values 0..1, opacity up to 85 %) over a 0..255 grey or RGB image dimmed to half."""
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float64)), 0.0, 1.0)
    rgb = scaled if scaled.ndim == 3 else np.repeat(scaled[..., None], 3, axis=-1)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap: expected shape {rgb.shape[:2]} like the image, found {heat.shape}")
    alpha = 0.85 * heat[..., None]
    red = np.array([255.0, 0.0, 0.0])
    return 0.5 * rgb * (1 - alpha) + red * alpha  # the image is dimmed so the map stands out


def png_data_uri(x: Any, target: int = TARGET, heatmap: Any = None) -> str:
    """Encode one image sample as a base64 PNG data URI.

    Args:
        x: One sample, ``H×W``, ``1×H×W``, ``3×H×W`` or channels-last, any numeric dtype.
        target: Approximate length in pixels of the longer side of the thumbnail.
        heatmap: Optional ``H×W`` map in 0..1 drawn over the image in red.

    Returns:
        A ``data:image/png;base64,...`` string.

    Raises:
        ValueError: If the sample is not shaped like an image.
    """
    img = _to_hwc(np.asarray(x, dtype=np.float64))
    img = np.nan_to_num(img, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(img.min()), float(img.max())
    scaled = (img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)
    if heatmap is not None:
        scaled = _overlay(scaled, heatmap)
    pil = Image.fromarray(np.ascontiguousarray(scaled.round().astype(np.uint8)))
    h, w = img.shape[:2]
    scale = target / max(h, w)
    if scale >= 2:
        factor = int(scale)
        pil = pil.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    elif scale < 1:
        pil = pil.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(spec: Mapping[str, Any], case: Case | None) -> list[dict[str, str]]:
    """The thumbnails of one image spec, as ``[{"uri": ..., "caption": ...}]``.

    Args:
        spec: An image spec (see the module docstring).
        case: The case the report was made from; without it (or when it is not an image
            case) there is nothing to show.

    Returns:
        One dict per valid index, at most :data:`MAX_IMAGES`.

    Raises:
        ValueError: If the spec names an unknown split, a bad index or non-image rows.
    """
    if case is None or getattr(case, "modality", None) != "image":
        return []
    split_name = str(spec.get("split", "train"))
    split = case.splits.get(split_name)
    if split is None:
        raise ValueError(f"split {split_name!r}: expected one of {sorted(case.splits)}")
    indices = spec.get("indices") or []
    if not isinstance(indices, Sequence) and not hasattr(indices, "tolist"):
        raise ValueError(f"indices: expected a list of row numbers, found {type(indices).__name__}")
    captions = spec.get("captions") or []
    heatmaps = spec.get("heatmaps") or []
    out: list[dict[str, str]] = []
    n = len(split)
    for k, raw in enumerate(list(indices)[:MAX_IMAGES]):
        i = int(raw)
        if not 0 <= i < n:
            raise ValueError(f"index {i}: expected a row in 0..{n - 1} of split {split_name!r}")
        caption = str(captions[k]) if k < len(captions) else f"{split_name}[{i}]"
        heat = heatmaps[k] if k < len(heatmaps) else None
        out.append({"uri": png_data_uri(split.x[i], heatmap=heat), "caption": caption})
    return out
