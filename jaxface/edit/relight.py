"""Relighting by ratio image: the photo's face pixels times ``new_shading / old_shading``.

The fitted geometry gives per-pixel normals; the SH shading under the photo's light (the fit's
``sh``, or estimated here by least squares with the model's albedo) and under the new light make
a ratio image that multiplies the photo inside the face, feathered into the untouched photo.
Texture detail, skin tone and specular spots of the photo are kept; only the smooth shading
changes. With ``sh_new == sh_old`` the ratio is exactly 1 and the photo is returned unchanged.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import to_screen
from jaxface.edit.frontalize import EditOutput
from jaxface.edit.texture import fit_vertices_camera
from jaxface.mesh.normals import vertex_normals
from jaxface.models.morphable import MorphableModel
from jaxface.render.interpolate import interpolate
from jaxface.render.pipeline import SKIN_TONE, vertex_albedo
from jaxface.render.rasterize import rasterize
from jaxface.render.shading import fit_sh_lstsq, sh_shading

Array = jax.Array

__all__ = ["relight", "relight_vertices", "face_triangle_mask", "estimate_sh", "feather"]


def face_triangle_mask(model: MorphableModel, regions: tuple[str, ...] = ("face",)) -> np.ndarray:
    """(T,) bool: triangles whose three vertices are in any of ``regions`` (all triangles when
    the model has none of them)."""
    tri = np.asarray(model.triangles)
    have = [r for r in regions if model.regions and r in model.regions]
    if not have:
        return np.ones(len(tri), bool)
    mask = np.zeros(model.n_vertices, bool)
    for r in have:
        mask |= np.asarray(model.regions[r], bool)
    return mask[tri].all(axis=1)


def feather(mask: Array, radius: int) -> Array:
    """(H, W) soft mask: ``mask`` eroded by ``radius`` px then box-blurred by ``radius``
    (1 deep inside, 0 outside the original mask)."""
    m = jnp.asarray(mask, jnp.float32)
    if radius <= 0:
        return m
    k = 2 * radius + 1
    er = -jax.lax.reduce_window(-m, -jnp.inf, jax.lax.max, (k, k), (1, 1), "SAME")
    box = jax.lax.reduce_window(er, 0.0, jax.lax.add, (k, k), (1, 1), "SAME") / (k * k)
    return box * m


def estimate_sh(image: Array, normals: Array, weights: Array, albedo: Any = SKIN_TONE) -> Array:
    """(9, 3) white SH light (one 9-vector shared by the channels) explaining ``image`` with
    ``albedo`` ((H, W, 3) or (3,)) over ``weights`` > 0 (lightly regularised).

    White, so that a photo whose colours differ from the albedo (a grey photo, a colour cast)
    gets no colour shift from the ratio; with the model's albedo the estimate has the scale of
    :func:`jaxface.render.render`'s ``sh``, so a new light is given in the same units."""
    return fit_sh_lstsq(albedo, normals, image, weights=weights, regularization=1e-3,
                        shared_channels=True)


def relight_vertices(verts_cam: Any, triangles: Any, face_triangles: Any, image: Any,
                     camera: Any, sh_new: Any, sh_old: Any = None, *, albedo: Any = SKIN_TONE,
                     feather_px: int = 3, match_brightness: bool = False,
                     max_ratio: float = 4.0, min_shading: float = 0.05) -> EditOutput:
    """Relight a photo given camera-frame vertices (pure JAX; jit with static ``feather_px``).

    Args:
      verts_cam: (V, 3) fitted camera-frame vertices; triangles: (F, 3) all triangles.
      face_triangles: (F,) bool, triangles to relight (others only occlude).
      image: (H, W, 3) photo; camera: its camera.
      sh_new: (9, 3) new light (camera frame, as :func:`jaxface.render.render`).
      sh_old: (9, 3) the photo's light, or None to estimate it by least squares with ``albedo``
        ((V, 3) per vertex or (3,)) over the face pixels.
      feather_px: soft-edge radius of the composite.
      match_brightness: scale ``sh_new`` so that its mean shading over the face equals the old
        light's (a change of light direction/colour, not of exposure).
      max_ratio: clamp of the shading ratio; min_shading: old shading below this is not divided
        (ratio 1 there).
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    verts_cam = jnp.asarray(verts_cam, jnp.float32)
    tri = jnp.asarray(triangles, jnp.int32)
    scr = to_screen(camera, verts_cam)
    frags = rasterize(scr.xyz, tri, (h, w), w=scr.w)
    covered = frags.triangle_id >= 0
    face = covered & jnp.asarray(face_triangles)[jnp.where(covered, frags.triangle_id, 0)]
    alb = jnp.broadcast_to(jnp.asarray(albedo, jnp.float32), verts_cam.shape)
    attrs = interpolate(jnp.concatenate([vertex_normals(verts_cam, tri), alb], -1), frags, tri)
    n, alb_px = attrs[..., :3], attrs[..., 3:]
    n = n / jnp.sqrt(jnp.maximum(jnp.sum(n * n, -1, keepdims=True), 1e-12))
    n = jnp.where(face[..., None], n, jnp.array([0.0, 0.0, -1.0]))
    if sh_old is None:
        sh_old = estimate_sh(image, n, face.astype(jnp.float32), alb_px)
    old = sh_shading(n, jnp.asarray(sh_old, jnp.float32))
    new = sh_shading(n, jnp.asarray(sh_new, jnp.float32))
    if match_brightness:
        wf = face.astype(jnp.float32)[..., None]
        new = new * (jnp.sum(old * wf) / jnp.maximum(jnp.sum(new * wf), 1e-6))
    ok = old > min_shading
    ratio = jnp.where(ok, jnp.clip(new / jnp.where(ok, old, 1.0), 0.0, max_ratio), 1.0)
    relit = jnp.clip(image * ratio, 0.0, 1.0)
    alpha = feather(face, feather_px)[..., None]
    out = alpha * relit + (1.0 - alpha) * image
    return EditOutput(image=out, mask=alpha[..., 0])


_relight_jit = jax.jit(relight_vertices, static_argnames=("feather_px", "match_brightness"))


def relight(model: MorphableModel, fit: Any, image: Any, sh_new: Any, *, sh_old: Any = None,
            regions: tuple[str, ...] = ("face",), feather_px: int = 3,
            max_ratio: float = 4.0, match_brightness: bool = False) -> EditOutput:
    """Relight the face in a photo with new SH coefficients (ratio-image method).

    Args:
      model: the fitted model; fit: its fit (identity, expression, rotation, translation,
        camera); image: (H, W, 3) photo in [0, 1].
      sh_new: (9, 3) new SH light in the camera frame.
      sh_old: (9, 3) the photo's light (e.g. a photometric fit's ``sh``); estimated when None.
      regions: model regions relit (default the face skin; eyes/mouth interior untouched).
      feather_px, max_ratio, match_brightness: see :func:`relight_vertices`.

    Returns:
      EditOutput(image (H, W, 3) relit photo, mask (H, W) composite weight).
    """
    verts = fit_vertices_camera(model, fit)
    ft = jnp.asarray(face_triangle_mask(model, regions))
    fa = getattr(fit, "albedo", None)
    if fa is not None and (np.ndim(fa) == 2 or np.shape(fa) == (3,)):
        alb = jnp.asarray(fa, jnp.float32)  # per-vertex albedo or mean colour of a fit
    else:
        alb = vertex_albedo(model, fa if model.albedo_basis is not None else None)
    return _relight_jit(verts, jnp.asarray(model.triangles, jnp.int32), ft, image, fit.camera,
                        sh_new, sh_old, albedo=alb, feather_px=int(feather_px),
                        max_ratio=max_ratio, match_brightness=bool(match_brightness))
