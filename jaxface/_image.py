"""uint8 image conversion shared by the viz, detector and mesh-export code (NumPy only)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = ["to_uint8"]


def to_uint8(image: Any, layout: Literal["keep", "rgb", "hwc"] = "keep") -> np.ndarray:
    """Image as uint8: float in [0, 1] -> ``round(clip(x, 0, 1) * 255)``, uint8 passed through.

    Floats are rounded half to even in their own precision (float32 stays float32, float64 stays
    float64; float16 goes through float32, bool and other integers through float64). NaN becomes
    0 and +-inf 255 / 0.

    Args:
      image: ``(H, W)`` or ``(H, W, C)`` array-like (``keep`` accepts any shape).
      layout: ``"keep"``: same shape as ``image``, a uint8 input returned as is (no copy).
        ``"rgb"``: ``(H, W, 3)`` C-contiguous; grey ``(H, W)`` / ``(H, W, 1)`` is repeated to
        three channels, the alpha of ``(H, W, 4)`` is dropped.
        ``"hwc"``: ``(H, W, C)`` C-contiguous with ``C`` in 1, 3, 4; ``(H, W)`` gets ``C = 1``.

    Returns:
      uint8 array, shaped as ``layout`` says.

    Raises:
      ValueError: a shape the layout does not accept.
    """
    img = np.asarray(image)
    if layout == "rgb":
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
        img = img[..., :3]
    elif layout == "hwc":
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image must be (H, W), (H, W, 1|3|4), got {tuple(np.shape(image))}")
    elif layout != "keep":
        raise ValueError(f"layout must be 'keep', 'rgb' or 'hwc', got {layout!r}")
    if img.dtype != np.uint8:
        if img.dtype.kind != "f":
            img = img.astype(np.float64)
        elif img.dtype.itemsize < 4:
            img = img.astype(np.float32)
        img = np.nan_to_num(img, nan=0.0, posinf=1.0, neginf=0.0)
        img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    if layout == "rgb" and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img if layout == "keep" else np.ascontiguousarray(img)
