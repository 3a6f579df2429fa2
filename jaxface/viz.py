"""Pictures for people to look at: landmarks, shaded renders composited over photos (uint8).

Host-side NumPy at the outer ring; the shaded render itself goes through the JAX rasteriser.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._image import to_uint8
from jaxface.camera import PerspectiveCamera
from jaxface.render.pipeline import render_mesh


def to_float(image: Any) -> np.ndarray:
    """Any uint8/float image (grey, RGB, RGBA) -> HxWx3 float32 in [0, 1]."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    return np.clip(img.astype(np.float32), 0.0, 1.0)


def draw_points(image: Any, points: Any, color=(0, 255, 0), radius: int = 2) -> np.ndarray:
    """Draw filled discs at (N, 2) pixel coordinates (OpenCV convention) on a copy of ``image``."""
    img = to_uint8(image).copy()
    h, w = img.shape[:2]
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (xx * xx + yy * yy) <= r * r + r
    for x, y in np.asarray(points, np.float64).reshape(-1, 2):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        cx, cy = int(np.floor(x)), int(np.floor(y))
        ys, xs = cy + yy[disc], cx + xx[disc]
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        img[ys[ok], xs[ok]] = color
    return img


def draw_lines(image: Any, a: Any, b: Any, color=(255, 255, 0)) -> np.ndarray:
    """Draw segments from points ``a`` (N, 2) to ``b`` (N, 2) (pixels) on a copy of ``image``."""
    img = to_uint8(image).copy()
    h, w = img.shape[:2]
    for (x0, y0), (x1, y1) in zip(np.asarray(a, float).reshape(-1, 2),
                                  np.asarray(b, float).reshape(-1, 2), strict=True):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.floor(np.linspace(x0, x1, n)).astype(int)
        ys = np.floor(np.linspace(y0, y1, n)).astype(int)
        ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        img[ys[ok], xs[ok]] = color
    return img


def shaded_render(verts_cam: Any, triangles: Any, camera: PerspectiveCamera,
                  image_size: tuple[int, int], sh: Any = None,
                  albedo: Any = (0.75, 0.72, 0.7)) -> tuple[np.ndarray, np.ndarray]:
    """Grey-clay render of a camera-frame mesh: (HxWx3 float image, HxW bool mask)."""
    out = _clay(jnp.asarray(verts_cam, jnp.float32), jnp.asarray(triangles, jnp.int32), camera,
                tuple(int(s) for s in image_size), None if sh is None else jnp.asarray(sh),
                jnp.asarray(albedo, jnp.float32))
    return np.asarray(out.rgb), np.asarray(out.mask) > 0


@functools.partial(jax.jit, static_argnames=("image_size",))
def _clay(verts_cam, triangles, camera, image_size, sh, albedo):
    return render_mesh(verts_cam, triangles, camera, image_size, albedo=albedo, sh=sh)


def composite(photo: Any, render: Any, mask: Any, alpha: float = 0.8) -> np.ndarray:
    """Blend ``render`` over ``photo`` where ``mask`` is set; uint8 HxWx3."""
    p = to_float(photo)
    m = np.asarray(mask, np.float32)[..., None] * alpha
    return to_uint8(p * (1.0 - m) + to_float(render) * m)
