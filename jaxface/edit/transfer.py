"""Expression transfer / reenactment: a target expression on the source identity, in the photo.

3D-guided backward warp: the source face with the target expression is rasterised at the source
pose; every covered pixel's surface point (triangle + barycentrics) is located on the *source*
geometry, projected into the photo and sampled there when it was visible in the photo. Surface
points the photo did not show (an opening mouth, the far side) take the extracted texture
(mirror-filled), and triangles outside the texture layout (mouth socket) an interior colour.
Where the expression does not move the surface, pixels map onto themselves: the photo is kept.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.camera import to_screen
from jaxface.edit.frontalize import EditOutput
from jaxface.edit.texture import Texture, extract_texture, fit_vertices_camera
from jaxface.render.interpolate import interpolate
from jaxface.render.rasterize import Fragments, rasterize
from jaxface.render.texture import texture as sample_texture

Array = jax.Array

__all__ = ["transfer_expression", "transfer_vertices", "expression_from_names"]

INTERIOR_DARKENING = 0.3


def transfer_vertices(verts_src: Any, verts_tgt: Any, triangles: Any, image: Any, camera: Any,
                      layout_index: Any, uv: Any, uv_triangles: Any, texture: Any, *,
                      interior: Any = None, interior_triangles: Any = None,
                      depth_tolerance: float = 3.0) -> EditOutput:
    """Pure-JAX core of :func:`transfer_expression`.

    Args:
      verts_src: (V, 3) camera-frame vertices as fitted; verts_tgt: (V, 3) with the new
        expression (same pose).
      triangles: (F, 3); image: (H, W, 3) photo; camera: its camera.
      layout_index: (F,) int32 row of each triangle in the texture layout, -1 if untextured.
      uv: (Vt, 2) layout uv; uv_triangles: (T, 3) layout uv ids; texture: (S, S, 3).
      interior: (3,) colour of unseen surface of ``interior_triangles`` (the mouth socket);
        default ``INTERIOR_DARKENING`` times the texture's mean colour.
      interior_triangles: (F,) bool, the untextured triangles drawn in ``interior`` when unseen
        (None: all untextured ones); other untextured unseen pixels sample the photo anyway.
      depth_tolerance: mm slack of the photo visibility test.
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[:2]
    tri = jnp.asarray(triangles, jnp.int32)
    vs = jnp.asarray(verts_src, jnp.float32)
    vt = jnp.asarray(verts_tgt, jnp.float32)
    scr_s = to_screen(camera, vs)
    scr_t = to_screen(camera, vt)
    f_src = rasterize(scr_s.xyz, tri, (h, w), w=scr_s.w)
    f_tgt = rasterize(scr_t.xyz, tri, (h, w), w=scr_t.w)
    covered = f_tgt.triangle_id >= 0
    # the same surface point on the source geometry (perspective-correct barycentrics of tgt)
    p_src = interpolate(vs, f_tgt, tri)
    q = to_screen(camera, p_src)
    x, y, z = q.xyz[..., 0], q.xyz[..., 1], q.xyz[..., 2]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    r = jnp.clip(jnp.floor(y).astype(jnp.int32), 0, h - 1)
    c = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, w - 1)
    seen = covered & inside & (f_src.triangle_id[r, c] >= 0) & \
        (z <= f_src.depth[r, c] + depth_tolerance)
    from_photo = sample_texture(image, jnp.stack([x / w, 1.0 - y / h], -1), "bilinear", "clamp")
    # texture for unseen points
    lidx = jnp.asarray(layout_index, jnp.int32)[jnp.where(covered, f_tgt.triangle_id, 0)]
    textured = covered & (lidx >= 0)
    f_uv = Fragments(triangle_id=jnp.where(textured, lidx, -1), barycentric=f_tgt.barycentric,
                     depth=f_tgt.depth)
    uvs = interpolate(jnp.asarray(uv, jnp.float32), f_uv, jnp.asarray(uv_triangles, jnp.int32))
    from_tex = sample_texture(jnp.asarray(texture, jnp.float32), uvs, "bilinear", "clamp")
    if interior is None:
        tex = jnp.asarray(texture, jnp.float32)
        valid = jnp.any(tex > 0, axis=-1, keepdims=True).astype(jnp.float32)
        interior = INTERIOR_DARKENING * jnp.sum(tex * valid, (0, 1)) / jnp.maximum(
            jnp.sum(valid), 1.0)
    inner = jnp.broadcast_to(jnp.asarray(interior, jnp.float32), image.shape)
    if interior_triangles is None:
        is_inner = ~textured
    else:
        is_inner = ~textured & jnp.asarray(interior_triangles, bool)[
            jnp.where(covered, f_tgt.triangle_id, 0)]
    col = jnp.where(seen[..., None], from_photo,
                    jnp.where(textured[..., None], from_tex,
                              jnp.where(is_inner[..., None], inner, from_photo)))
    out = jnp.where(covered[..., None], col, image)
    return EditOutput(image=out, mask=covered.astype(jnp.float32))


_transfer_jit = jax.jit(transfer_vertices)


def expression_from_names(model: Any, weights: dict[str, float], base: Any = None) -> np.ndarray:
    """(Ke,) expression vector from ``{blendshape name: weight}`` (on top of ``base``).

    Raises:
      ValueError: unknown name (the message lists the model's names).
    """
    names = list(model.expression_names or ())
    e = np.zeros(model.n_expression, np.float32) if base is None else \
        np.array(base, np.float32).copy()
    for k, val in weights.items():
        if k not in names:
            raise ValueError(f"model {model.name!r} has no expression {k!r}; known: "
                             f"{', '.join(names) if names else '(none named)'}")
        e[names.index(k)] = float(val)
    return e


def transfer_expression(model: Any, source_fit: Any, target_expression: Any, image: Any,
                        texture: Texture | None = None, *, texture_size: int = 256,
                        depth_tolerance: float = 3.0) -> EditOutput:
    """Put ``target_expression`` on the source identity and composite it into the photo.

    Args:
      model: the fitted model (with expressions).
      source_fit: the photo's fit (identity, expression, rotation, translation, camera).
      target_expression: (Ke,) expression coefficients (e.g. another fit's ``expression``:
        reenactment), or a ``{name: weight}`` dict of blendshape weights.
      image: (H, W, 3) the source photo.
      texture: the source's Texture (extracted here, ``texture_size``, when None).

    Returns:
      EditOutput(image (H, W, 3), mask (H, W): pixels covered by the re-posed face).

    Raises:
      ValueError: the model has no expression basis or the expression has the wrong size.
    """
    if not model.n_expression:
        raise ValueError(f"model {model.name!r} has no expression basis")
    if isinstance(target_expression, dict):
        target_expression = expression_from_names(model, target_expression)
    te = jnp.asarray(target_expression, jnp.float32)
    if te.shape != (model.n_expression,):
        raise ValueError(f"target_expression must have shape ({model.n_expression},), got "
                         f"{tuple(te.shape)}")
    if texture is None:
        texture = extract_texture(model, image, source_fit, texture_size)
    layout = texture.layout
    lidx = np.full(len(np.asarray(model.triangles)), -1, np.int32)
    lidx[np.asarray(layout.triangle_ids)] = np.arange(len(layout.triangle_ids), dtype=np.int32)
    vs = fit_vertices_camera(model, source_fit)
    vt = fit_vertices_camera(model, source_fit, expression=te)
    tri = np.asarray(model.triangles)
    inner = None
    if model.regions and "mouth" in model.regions:
        inner = np.asarray(model.regions["mouth"], bool)[tri].all(axis=1)
    return _transfer_jit(vs, vt, jnp.asarray(tri, jnp.int32), image,
                         source_fit.camera, lidx, layout.uv, layout.uv_triangles,
                         texture.texture, interior_triangles=inner,
                         depth_tolerance=depth_tolerance)
