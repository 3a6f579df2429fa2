"""Shadow maps: a visibility term for directional and point lights (rasterise from the light).

A shadow map is the depth buffer of the mesh seen from the light, made with the exact hard
rasteriser :func:`jaxface.render.rasterize`. A point is *lit* when it is not farther from the
light than the surface recorded in its texel (minus a depth bias). The visibility of points
(per-vertex ``(V, 3)``, per-pixel ``(H, W, 3)``, any ``(..., 3)``) multiplies that light's
contribution in :func:`jaxface.render.shading.shade_phong` (its ``visibility`` argument).

Light cameras (mesh, light and points all in one frame, e.g. the camera frame, in mm):

* **directional** (:func:`directional_shadow_map`): an orthographic camera looking along
  ``-direction`` (``direction`` points from the surface *towards* the light, as in
  :class:`~jaxface.render.shading.DirectionalLight`), its image plane fitted to the bounding box
  of the projected vertices with ``margin`` texels to spare on each side (square texels).
* **point** (:func:`point_shadow_map`): a pinhole camera at the light position looking at the
  centre of the mesh's bounding box, its focal length and principal point fitted so that every
  vertex in front of it (``z > near``) projects inside the map with ``margin`` texels to spare
  (square texels; field of view at most ``max_fov_degrees``). The light must lie outside the mesh:
  triangles crossing its near plane are dropped from the map (they cast no shadow) and points
  with ``z <= near`` are reported lit. An omnidirectional (cube) map is not provided.

The light-camera rotation has the light's forward axis as its ``+z``; its ``x`` axis is made
orthogonal to the world axis least aligned with the forward axis, so the construction is
defined for every direction and is jit/vmap-friendly.

Depth bias (slope-scaled; all in texels, hence independent of scene scale and map size)
------------------------------------------------------------------------------------------
The map stores the depth of the surface at texel *centres*, while a point sits anywhere in its
texel, and percentage-closer filtering compares it with texels up to ``r = pcf // 2`` away. On a
planar receiver tilted by ``theta`` from the light direction (``cos theta = n . l``), the depth
changes by ``tan(theta)`` texel-widths per texel, and the farthest sampled texel centre is at most
``reach = sqrt(2) (r + 1/2)`` texels from the point, so a point is compared against
``depth_point - bias`` with

    bias = texel * (constant_bias + slope_bias * reach * min(tan(theta), max_slope)),

``texel`` the world size of one texel at the point (``1 / scale`` for the orthographic map,
``z / f`` for the perspective one). ``slope_bias = 1`` is the exact planar worst case;
``constant_bias`` (default one texel) absorbs curvature and rounding. Without normals,
``tan(theta)`` is taken as 1. A larger bias removes more "shadow acne" (false self-shadowing
of lit surfaces) at the price of "peter-panning" (shadows detaching from contact points).

Percentage-closer filtering (PCF)
---------------------------------
``pcf = k`` (odd, static) averages the lit/shadowed test over the ``k x k`` texels around the
point's texel, giving visibility values in ``{0, 1/k^2, ..., 1}`` and soft shadow edges about
``k`` texels wide. ``pcf = 1`` is the plain binary test.

Differentiability
-----------------
Visibility is piecewise constant in the points, the mesh and the light (a comparison per
texel): its derivative is zero almost everywhere and does not exist on shadow boundaries. The
map is built from ``stop_gradient`` inputs and the comparisons carry no gradient, so using it
as a multiplier keeps gradients w.r.t. points, normals, albedo and light colours finite (they
flow through the shading terms only); nothing differentiates the shadow boundary itself. All
functions are pure and jit/vmap-compatible (``map_size`` and ``pcf`` are static).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.camera import DEFAULT_NEAR
from jaxface.render.rasterize import rasterize
from jaxface.render.shading import DirectionalLight, PointLight

Array = jax.Array

__all__ = [
    "ShadowMap",
    "directional_shadow_map",
    "light_visibility",
    "point_shadow_map",
    "shadow_map",
    "shadow_visibility",
]


@pytree_dataclass
class ShadowMap:
    """The depth of the mesh seen from a light (a pytree; vmap gives a leading batch axis).

    Attributes:
      depth: ``(H, W)`` float32 depth along the light's forward axis of the nearest surface at
        each texel centre (``+inf`` where no triangle covers it).
      rotation: ``(3, 3)`` frame -> light rotation (rows: the light camera's axes).
      translation: ``(3,)``; ``p_light = rotation @ p + translation``.
      scale: ``(2,)`` ``(sx, sy)``: texels per unit length (orthographic) or focal lengths in
        texels (perspective).
      center: ``(2,)`` principal point ``(cx, cy)`` in texels.
      perspective: static; True for a point light (pinhole), False for a directional light.
      near: static near-plane distance of the perspective light camera.
    """

    depth: Any
    rotation: Any
    translation: Any
    scale: Any
    center: Any
    perspective: bool = static_field(default=False)
    near: float = static_field(default=DEFAULT_NEAR)


def _size(map_size: Any) -> tuple[int, int]:
    if isinstance(map_size, (int, np.integer)):
        h = w = int(map_size)
    else:
        h, w = (int(s) for s in map_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"map_size must be positive, got {map_size!r}")
    return h, w


def _unit(v: Array) -> Array:
    return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-30))


def _light_rotation(forward: Array) -> Array:
    """(3, 3) rotation whose rows are the light camera's x, y, z axes (z = ``forward``)."""
    f = _unit(forward)
    up = jnp.eye(3, dtype=f.dtype)[jnp.argmin(jnp.abs(f))]
    x = _unit(jnp.cross(f, up))
    y = jnp.cross(f, x)
    return jnp.stack([x, y, f], axis=0)


def _prepare(vertices: Any, triangles: Any) -> tuple[Array, Array]:
    v = jax.lax.stop_gradient(jnp.asarray(vertices, jnp.float32))
    if v.ndim != 2 or v.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {tuple(v.shape)}")
    return v, jnp.asarray(triangles, jnp.int32)


def _fit(lo: Array, hi: Array, h: int, w: int, margin: float) -> tuple[Array, Array]:
    """Square-texel scale and principal point mapping the box [lo, hi] (2,) into the map."""
    if not 0 <= 2 * margin < min(h, w):
        raise ValueError(f"margin {margin} leaves no room in a {(h, w)} map")
    ext = jnp.maximum(hi - lo, 1e-6)
    s = jnp.minimum((w - 2.0 * margin) / ext[0], (h - 2.0 * margin) / ext[1])
    centre = jnp.array([w / 2.0, h / 2.0], lo.dtype) - s * 0.5 * (lo + hi)
    return jnp.stack([s, s]), centre


def directional_shadow_map(
    vertices: Any,
    triangles: Any,
    direction: Any,
    map_size: int | tuple[int, int] = 256,
    *,
    margin: float = 2.0,
) -> ShadowMap:
    """Shadow map of a directional light (orthographic light camera fitted to the mesh).

    Args:
      vertices: ``(V, 3)`` mesh vertices (all of them bound the map).
      triangles: ``(F, 3)`` int.
      direction: ``(3,)`` from the surface towards the light (normalised here).
      map_size: static ``(H, W)`` or an int for a square map.
      margin: static free texels kept around the projected mesh on each side.

    Returns:
      :class:`ShadowMap` (``perspective=False``); depth is the coordinate along ``-direction``
      relative to the centre of the mesh's bounding box.
    """
    h, w = _size(map_size)
    v, tri = _prepare(vertices, triangles)
    d = jax.lax.stop_gradient(jnp.asarray(direction, jnp.float32))
    rot = _light_rotation(-d)
    centre = 0.5 * (jnp.min(v, axis=0) + jnp.max(v, axis=0))
    trans = -rot @ centre
    pl = v @ rot.T + trans
    scale, cen = _fit(jnp.min(pl[:, :2], axis=0), jnp.max(pl[:, :2], axis=0), h, w, margin)
    scr = jnp.concatenate([pl[:, :2] * scale + cen, pl[:, 2:]], axis=-1)
    depth = rasterize(scr, tri, (h, w)).depth
    return ShadowMap(depth=depth, rotation=rot, translation=trans, scale=scale, center=cen,
                     perspective=False)


def point_shadow_map(
    vertices: Any,
    triangles: Any,
    position: Any,
    map_size: int | tuple[int, int] = 256,
    *,
    margin: float = 2.0,
    near: float = DEFAULT_NEAR,
    max_fov_degrees: float = 160.0,
) -> ShadowMap:
    """Shadow map of a point light (pinhole light camera looking at the mesh's box centre).

    Args:
      vertices: ``(V, 3)``; triangles: ``(F, 3)`` int.
      position: ``(3,)`` light position (outside the mesh).
      map_size: static ``(H, W)`` or int.
      margin: static free texels around the projected mesh on each side.
      near: static near plane (same units as the vertices); triangles with a vertex at
        ``z <= near`` in the light camera are left out of the map.
      max_fov_degrees: static cap on the fitted field of view (both axes).

    Returns:
      :class:`ShadowMap` (``perspective=True``); depth is the light camera's ``z``
      (perspective-correct).
    """
    h, w = _size(map_size)
    if not 0.0 < max_fov_degrees < 180.0:
        raise ValueError(f"max_fov_degrees must be in (0, 180), got {max_fov_degrees}")
    v, tri = _prepare(vertices, triangles)
    pos = jax.lax.stop_gradient(jnp.asarray(position, jnp.float32))
    target = 0.5 * (jnp.min(v, axis=0) + jnp.max(v, axis=0))
    rot = _light_rotation(target - pos)
    trans = -rot @ pos
    pl = v @ rot.T + trans
    z = pl[:, 2]
    ok = z > near
    zs = jnp.where(ok, z, 1.0)
    tmax = math.tan(math.radians(max_fov_degrees) / 2.0)
    tan = jnp.clip(pl[:, :2] / zs[:, None], -tmax, tmax)
    lo = jnp.min(jnp.where(ok[:, None], tan, jnp.inf), axis=0)
    hi = jnp.max(jnp.where(ok[:, None], tan, -jnp.inf), axis=0)
    anyok = jnp.any(ok)
    lo = jnp.where(anyok, lo, -1.0)
    hi = jnp.where(anyok, hi, 1.0)
    scale, cen = _fit(lo, hi, h, w, margin)
    scr = jnp.concatenate([tan * scale + cen, zs[:, None]], axis=-1)
    scr = jnp.where(ok[:, None], scr, jnp.nan)  # rasterize ignores non-finite triangles
    depth = rasterize(scr, tri, (h, w), w=zs).depth
    return ShadowMap(depth=depth, rotation=rot, translation=trans, scale=scale, center=cen,
                     perspective=True, near=float(near))


def shadow_map(
    vertices: Any,
    triangles: Any,
    light: DirectionalLight | PointLight,
    map_size: int | tuple[int, int] = 256,
    *,
    margin: float = 2.0,
) -> ShadowMap:
    """:func:`directional_shadow_map` or :func:`point_shadow_map` for a shading light."""
    if isinstance(light, DirectionalLight):
        return directional_shadow_map(vertices, triangles, light.direction, map_size,
                                      margin=margin)
    if isinstance(light, PointLight):
        return point_shadow_map(vertices, triangles, light.position, map_size, margin=margin)
    raise TypeError(f"light must be DirectionalLight or PointLight, got {type(light).__name__}")


def shadow_visibility(
    smap: ShadowMap,
    points: Any,
    normals: Any = None,
    *,
    pcf: int = 1,
    constant_bias: float = 1.0,
    slope_bias: float = 1.0,
    max_slope: float = 10.0,
) -> Array:
    """Fraction of the light reaching each point, in ``[0, 1]`` (see the module doc).

    Args:
      smap: a :class:`ShadowMap` built in the frame of ``points``.
      points: ``(..., 3)`` (per-vertex ``(V, 3)``, per-pixel ``(H, W, 3)``, ...).
      normals: optional ``(..., 3)`` surface normals (any length) for the slope-scaled bias.
      pcf: static odd kernel size ``k`` of percentage-closer filtering (1: binary).
      constant_bias, slope_bias: depth bias coefficients, in texels (module doc).
      max_slope: clamp on ``tan(theta)`` (grazing and back-facing points).

    Returns:
      ``(...,)`` visibility: 1 lit, 0 in shadow, ``j / k^2`` on PCF edges. Points outside the
      map, over empty texels or (point light) behind its near plane count as lit. Piecewise
      constant; carries no gradient.
    """
    pcf = int(pcf)
    if pcf < 1 or pcf % 2 == 0:
        raise ValueError(f"pcf must be a positive odd int, got {pcf}")
    p = jax.lax.stop_gradient(jnp.asarray(points, jnp.float32))
    if p.ndim < 1 or p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {tuple(p.shape)}")
    depth = smap.depth
    h, w = depth.shape[-2:]
    rot = jnp.asarray(smap.rotation, jnp.float32)
    pl = p @ rot.T + jnp.asarray(smap.translation, jnp.float32)
    z = pl[..., 2]
    scale = jnp.asarray(smap.scale, jnp.float32)
    if smap.perspective:
        front = z > smap.near
        zs = jnp.where(front, z, 1.0)
        uv = pl[..., :2] / zs[..., None] * scale + smap.center
        texel = zs / jnp.min(scale)
        to_light = _unit(-pl)  # the light sits at the light camera's origin
    else:
        front = jnp.ones(z.shape, bool)
        uv = pl[..., :2] * scale + smap.center
        texel = jnp.broadcast_to(1.0 / jnp.min(scale), z.shape)
        to_light = jnp.broadcast_to(jnp.array([0.0, 0.0, -1.0], jnp.float32), pl.shape)
    if normals is None:
        tan = jnp.ones(z.shape, jnp.float32)
    else:
        n = jax.lax.stop_gradient(jnp.asarray(normals, jnp.float32))
        n = _unit(n @ rot.T)
        cos = jnp.sum(n * to_light, axis=-1)
        sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, 0.0))
        tan = jnp.where(cos * max_slope > sin, sin / jnp.where(cos > 0, cos, 1.0), max_slope)
    r = pcf // 2
    reach = math.sqrt(2.0) * (r + 0.5)
    bias = texel * (constant_bias + slope_bias * reach * tan)
    test_depth = z - bias
    uv = jnp.where(jnp.isfinite(uv), uv, -10.0 * (r + 2))
    uv = jnp.clip(uv, -2.0 * (r + 2), jnp.array([w, h], jnp.float32) + 2.0 * (r + 2))
    col = jnp.floor(uv[..., 0]).astype(jnp.int32)
    row = jnp.floor(uv[..., 1]).astype(jnp.int32)
    lit = jnp.zeros(z.shape, jnp.float32)
    for di in range(-r, r + 1):
        for dj in range(-r, r + 1):
            rr, cc = row + di, col + dj
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            d = depth[jnp.clip(rr, 0, h - 1), jnp.clip(cc, 0, w - 1)]
            lit = lit + ((~inside) | (test_depth <= d)).astype(jnp.float32)
    vis = lit / float(pcf * pcf)
    return jnp.where(front, vis, 1.0)


def light_visibility(
    vertices: Any,
    triangles: Any,
    light: DirectionalLight | PointLight,
    points: Any,
    normals: Any = None,
    map_size: int | tuple[int, int] = 256,
    *,
    pcf: int = 1,
    margin: float = 2.0,
    constant_bias: float = 1.0,
    slope_bias: float = 1.0,
    max_slope: float = 10.0,
) -> Array:
    """:func:`shadow_map` then :func:`shadow_visibility`: ``(...,)`` visibility of ``points``
    under ``light``, occluded by the mesh ``(vertices, triangles)`` (all in one frame)."""
    smap = shadow_map(vertices, triangles, light, map_size, margin=margin)
    return shadow_visibility(smap, points, normals, pcf=pcf, constant_bias=constant_bias,
                             slope_bias=slope_bias, max_slope=max_slope)
