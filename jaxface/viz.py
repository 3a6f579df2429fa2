"""Pictures for people to look at: landmarks, shaded renders composited over photos (uint8).

Host-side NumPy at the outer ring; the shaded render itself goes through the JAX rasteriser.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import PerspectiveCamera, to_screen
from jaxface.mesh.normals import vertex_normals
from jaxface.render.shading import sh_ambient, sh_directional, sh_shading


def to_uint8(image: Any) -> np.ndarray:
    """HxWx3 float [0, 1] (or uint8) -> HxWx3 uint8."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


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
    rgb, mask = _shaded(jnp.asarray(verts_cam, jnp.float32), jnp.asarray(triangles, jnp.int32),
                        camera, tuple(int(s) for s in image_size),
                        None if sh is None else jnp.asarray(sh), jnp.asarray(albedo, jnp.float32))
    return np.asarray(rgb), np.asarray(mask)


@functools.partial(jax.jit, static_argnames=("image_size",))
def _shaded(verts_cam, triangles, camera, image_size, sh, albedo):
    from jaxface.render.interpolate import interpolate
    from jaxface.render.rasterize import rasterize

    scr = to_screen(camera, verts_cam)
    frags = rasterize(scr.xyz, triangles, image_size, w=scr.w)
    # Camera-frame normals (visible surfaces face -z). Default light: ambient plus a key light
    # from the viewer's upper left (camera frame: +x right, +y down, +z forward).
    normals = vertex_normals(verts_cam, triangles)
    if sh is None:
        sh = 0.45 * sh_ambient(1.0) + 0.7 * sh_directional(jnp.array([-0.4, -0.5, -1.0]))
    n_px = interpolate(normals, frags, triangles)
    n_px = n_px / jnp.maximum(jnp.linalg.norm(n_px, axis=-1, keepdims=True), 1e-8)
    shade = sh_shading(n_px, sh)
    mask = frags.triangle_id >= 0
    rgb = jnp.clip(albedo * shade, 0.0, 1.0) * mask[..., None]
    return rgb, mask


def composite(photo: Any, render: Any, mask: Any, alpha: float = 0.8) -> np.ndarray:
    """Blend ``render`` over ``photo`` where ``mask`` is set; uint8 HxWx3."""
    p = to_float(photo)
    m = np.asarray(mask, np.float32)[..., None] * alpha
    return to_uint8(p * (1.0 - m) + to_float(render) * m)
