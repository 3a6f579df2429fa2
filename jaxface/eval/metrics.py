"""Evaluation metrics: landmark NME, aligned vertex error, pose error, scan-to-mesh distances.

All functions are pure JAX (jit; ``vmap`` where noted) unless stated otherwise.

Landmark NME conventions (68-point iBUG order, 0-based indices below):

* ``"bbox"`` -- AFLW2000-3D / 3DDFA protocol: mean point-to-point error divided by
  ``sqrt(w * h)`` of the ground-truth landmarks' bounding box.
* ``"interocular"`` -- 300-W: divided by the distance between the outer eye corners
  (points 36 and 45).
* ``"interpupil"`` -- divided by the distance between the eye centres (means of points 36-41 and
  42-47).
* ``"diag"`` -- divided by the diagonal ``sqrt(w^2 + h^2)`` of the ground-truth bounding box.

NME values are fractions (multiply by 100 for the usual percentages).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxface.geometry import Similarity, matrix_to_euler, umeyama

Array = jax.Array

__all__ = [
    "NORMALISATIONS",
    "ChamferResult",
    "VertexError",
    "aligned_vertex_error",
    "chamfer_scan_mesh",
    "euler_error_degrees",
    "landmark_rmse",
    "nearest_point_distance",
    "nme",
    "point_triangle_distance",
    "rotation_error_degrees",
    "scan_to_mesh",
]

NORMALISATIONS = ("bbox", "interocular", "interpupil", "diag")
_HI = jax.lax.Precision.HIGHEST


def _check_landmarks(pred: Any, gt: Any) -> tuple[Array, Array]:
    p = jnp.asarray(pred, jnp.float32) if not jnp.issubdtype(jnp.asarray(pred).dtype,
                                                             jnp.floating) else jnp.asarray(pred)
    g = jnp.asarray(gt, p.dtype)
    if p.ndim < 2 or p.shape[-1] != 2 or p.shape != g.shape:
        raise ValueError(f"pred and gt must both be (..., L, 2) with equal shapes, got "
                         f"{tuple(p.shape)} and {tuple(g.shape)}")
    return p, g


def _normaliser(g: Array, normalisation: str, valid: Array) -> Array:
    if normalisation in ("bbox", "diag"):
        big = jnp.asarray(jnp.inf, g.dtype)
        lo = jnp.min(jnp.where(valid[..., None], g, big), axis=-2)
        hi = jnp.max(jnp.where(valid[..., None], g, -big), axis=-2)
        wh = hi - lo
        if normalisation == "bbox":
            return jnp.sqrt(wh[..., 0] * wh[..., 1])
        return jnp.sqrt(jnp.sum(wh * wh, axis=-1))
    if g.shape[-2] != 68:
        raise ValueError(f"{normalisation!r} normalisation needs the 68 iBUG landmarks, "
                         f"got {g.shape[-2]}")
    if normalisation == "interocular":
        return jnp.linalg.norm(g[..., 36, :] - g[..., 45, :], axis=-1)
    if normalisation == "interpupil":
        left = jnp.mean(g[..., 36:42, :], axis=-2)
        right = jnp.mean(g[..., 42:48, :], axis=-2)
        return jnp.linalg.norm(left - right, axis=-1)
    raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")


def nme(pred: Any, gt: Any, normalisation: str = "bbox", valid: Any = None) -> Array:
    """Normalised mean error of 2D landmarks.

    Args:
      pred, gt: (..., L, 2) predicted and ground-truth landmarks (pixels); L = 68 for
        ``"interocular"`` / ``"interpupil"``.
      normalisation: ``"bbox"`` (AFLW2000-3D, ``sqrt(w h)`` of the ground-truth box),
        ``"interocular"`` (300-W, outer eye corners), ``"interpupil"`` or ``"diag"`` (static).
      valid: optional (..., L) bool; only these points enter the mean (and the bounding box).

    Returns:
      (...,) mean point-to-point distance divided by the normaliser (a fraction).
    """
    p, g = _check_landmarks(pred, gt)
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    v = (jnp.ones(p.shape[:-1], bool) if valid is None
         else jnp.broadcast_to(jnp.asarray(valid, bool), p.shape[:-1]))
    d = jnp.linalg.norm(p - g, axis=-1)
    mean_d = jnp.sum(jnp.where(v, d, 0.0), -1) / jnp.maximum(jnp.sum(v, -1), 1)
    return mean_d / _normaliser(g, normalisation, v)


def landmark_rmse(pred: Any, gt: Any, valid: Any = None) -> Array:
    """(..., L, 2) -> (...,) root-mean-square point-to-point distance (pixels)."""
    p, g = _check_landmarks(pred, gt)
    v = (jnp.ones(p.shape[:-1], bool) if valid is None
         else jnp.broadcast_to(jnp.asarray(valid, bool), p.shape[:-1]))
    d2 = jnp.sum(jnp.square(p - g), -1)
    return jnp.sqrt(jnp.sum(jnp.where(v, d2, 0.0), -1) / jnp.maximum(jnp.sum(v, -1), 1))


class VertexError(NamedTuple):
    """Output of :func:`aligned_vertex_error`.

    Attributes:
      mean: () mean per-vertex distance over the mask (units of the inputs, mm).
      median: () median over the mask.
      per_vertex: (V,) distance after alignment (NaN outside the mask).
      transform: the :class:`Similarity` applied to ``pred``.
    """

    mean: Array
    median: Array
    per_vertex: Array
    transform: Similarity


def aligned_vertex_error(pred: Any, gt: Any, mask: Any = None, with_scale: bool = True
                         ) -> VertexError:
    """Per-vertex Euclidean error after a least-squares similarity alignment (Umeyama).

    ``pred`` is aligned onto ``gt`` by the similarity (rigid when ``with_scale`` is False) that
    minimises the squared distances over the masked vertices; the error is then measured on the
    masked vertices.

    Args:
      pred, gt: (V, 3) corresponding vertices (same topology), mm.
      mask: optional (V,) bool region (e.g. ``model.regions["face"]``).
      with_scale: estimate a scale (static).

    Returns:
      :class:`VertexError`.
    """
    p = jnp.asarray(pred, jnp.float32)
    g = jnp.asarray(gt, jnp.float32)
    if p.ndim != 2 or p.shape[-1] != 3 or p.shape != g.shape:
        raise ValueError(f"pred and gt must both be (V, 3) with equal shapes, got "
                         f"{tuple(p.shape)} and {tuple(g.shape)}")
    m = jnp.ones(p.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
    if m.shape != p.shape[:1]:
        raise ValueError(f"mask must have shape ({p.shape[0]},), got {tuple(m.shape)}")
    tf = umeyama(p, g, with_scale=with_scale, weights=m.astype(p.dtype))
    d = jnp.linalg.norm(tf.apply(p) - g, axis=-1)
    per = jnp.where(m, d, jnp.nan)
    return VertexError(mean=jnp.nanmean(per), median=jnp.nanmedian(per), per_vertex=per,
                       transform=tf)


def rotation_error_degrees(r_pred: Any, r_gt: Any) -> Array:
    """Geodesic angle between rotations (..., 3, 3) in degrees: ``acos((tr(R1^T R2) - 1)/2)``."""
    a = jnp.asarray(r_pred, jnp.float32)
    b = jnp.asarray(r_gt, jnp.float32)
    if a.shape[-2:] != (3, 3) or a.shape != b.shape:
        raise ValueError(f"need (..., 3, 3) rotations of equal shapes, got {a.shape}, {b.shape}")
    tr = jnp.einsum("...ij,...ij->...", a, b, precision=_HI)
    return jnp.degrees(jnp.arccos(jnp.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def euler_error_degrees(r_pred: Any, r_gt: Any) -> Array:
    """Absolute (pitch, yaw, roll) differences in degrees (..., 3), angles wrapped to [0, 180].

    Euler angles follow :func:`jaxface.geometry.matrix_to_euler`; this is the per-angle mean
    absolute error used on AFLW2000-3D once both rotations are in the same frame.
    """
    ea = matrix_to_euler(jnp.asarray(r_pred, jnp.float32))
    eb = matrix_to_euler(jnp.asarray(r_gt, jnp.float32))
    d = jnp.abs(ea - eb) % (2 * jnp.pi)
    return jnp.degrees(jnp.minimum(d, 2 * jnp.pi - d))


# ------------------------------------------------------------------------------------------------
# Point-to-triangle distances
# ------------------------------------------------------------------------------------------------

def _seg_dist2(p: Array, a: Array, b: Array) -> Array:
    ab = b - a
    t = jnp.sum((p - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-30)
    t = jnp.clip(t, 0.0, 1.0)
    q = a + t[..., None] * ab
    return jnp.sum(jnp.square(p - q), -1)


def point_triangle_distance(p: Any, a: Any, b: Any, c: Any) -> Array:
    """Exact Euclidean distance from points to triangles (broadcasting over leading axes).

    The closest point of a triangle is either the orthogonal projection onto its plane (when
    that lies inside, tested with signed sub-triangle areas) or the closest point of one of its
    three edges; degenerate triangles reduce to their edges.

    Args:
      p, a, b, c: (..., 3) points and triangle corners (broadcastable).

    Returns:
      (...,) distances.
    """
    p, a, b, c = (jnp.asarray(x, jnp.float32) for x in (p, a, b, c))
    n = jnp.cross(b - a, c - a)
    nn = jnp.sum(n * n, -1)
    ok = nn > 1e-20
    nn_safe = jnp.where(ok, nn, 1.0)
    s_ab = jnp.sum(jnp.cross(b - a, p - a) * n, -1)
    s_bc = jnp.sum(jnp.cross(c - b, p - b) * n, -1)
    s_ca = jnp.sum(jnp.cross(a - c, p - c) * n, -1)
    inside = ok & (s_ab >= 0) & (s_bc >= 0) & (s_ca >= 0)
    plane2 = jnp.square(jnp.sum((p - a) * n, -1)) / nn_safe
    edge2 = jnp.minimum(jnp.minimum(_seg_dist2(p, a, b), _seg_dist2(p, b, c)),
                        _seg_dist2(p, c, a))
    return jnp.sqrt(jnp.where(inside, plane2, edge2))


def _pad_rows(x: Array, multiple: int) -> tuple[Array, int]:
    n = x.shape[0]
    m = -(-n // multiple) * multiple
    if m == n:
        return x, n
    pad = jnp.broadcast_to(x[:1], (m - n,) + x.shape[1:])
    return jnp.concatenate([x, pad], 0), n


def scan_to_mesh(points: Any, verts: Any, triangles: Any, point_chunk: int = 256,
                 triangle_chunk: int = 2048) -> tuple[Array, Array]:
    """Distance from every scan point to the nearest point of a triangle mesh (brute force).

    Memory stays at ``O(point_chunk * triangle_chunk)``: points are processed in chunks
    (``lax.map``) and, for each, the triangles in chunks (``lax.scan``) with a running minimum.
    Jit-able (the chunk sizes are static).

    Args:
      points: (N, 3) scan points.
      verts: (V, 3) mesh vertices.
      triangles: (T, 3) int vertex ids.
      point_chunk, triangle_chunk: chunk sizes.

    Returns:
      distances (N,), nearest triangle index (N,).
    """
    pts = jnp.asarray(points, jnp.float32)
    v = jnp.asarray(verts, jnp.float32)
    tri = jnp.asarray(triangles)
    if pts.ndim != 2 or pts.shape[-1] != 3 or v.ndim != 2 or v.shape[-1] != 3:
        raise ValueError(f"points and verts must be (N, 3) and (V, 3), got {pts.shape}, "
                         f"{v.shape}")
    if tri.ndim != 2 or tri.shape[-1] != 3 or tri.shape[0] == 0:
        raise ValueError(f"triangles must be (T, 3) with T > 0, got {tri.shape}")
    n = pts.shape[0]
    if n == 0:
        return jnp.zeros((0,), jnp.float32), jnp.zeros((0,), jnp.int32)
    pc = max(1, min(int(point_chunk), n))
    tc = max(1, min(int(triangle_chunk), tri.shape[0]))
    corners = v[tri]  # (T, 3, 3)
    corners, _ = _pad_rows(corners, tc)  # padding repeats triangle 0: the minimum is unchanged
    corners = corners.reshape(-1, tc, 3, 3)
    ptsp, _ = _pad_rows(pts, pc)
    ptsp = ptsp.reshape(-1, pc, 3)

    def per_chunk(pchunk: Array) -> tuple[Array, Array]:
        def step(carry, xs):
            best, arg = carry
            k, tchunk = xs
            d = point_triangle_distance(pchunk[:, None, :], tchunk[None, :, 0],
                                        tchunk[None, :, 1], tchunk[None, :, 2])  # (pc, tc)
            j = jnp.argmin(d, axis=1)
            dmin = jnp.take_along_axis(d, j[:, None], 1)[:, 0]
            better = dmin < best
            return (jnp.where(better, dmin, best),
                    jnp.where(better, k * tc + j.astype(jnp.int32), arg)), None

        init = (jnp.full((pc,), jnp.inf, jnp.float32), jnp.zeros((pc,), jnp.int32))
        ks = jnp.arange(corners.shape[0], dtype=jnp.int32)
        (best, arg), _ = jax.lax.scan(step, init, (ks, corners))
        return best, arg

    d, idx = jax.lax.map(per_chunk, ptsp)
    return d.reshape(-1)[:n], idx.reshape(-1)[:n]


def nearest_point_distance(a: Any, b: Any, chunk: int = 1024) -> Array:
    """For each point of ``a`` (N, 3), the distance to the nearest point of ``b`` (M, 3).

    Chunked over ``a`` (``lax.map``) so memory is ``O(chunk * M)``.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[-1] != b.shape[-1] or b.shape[0] == 0:
        raise ValueError(f"need (N, D) and non-empty (M, D) points, got {a.shape}, {b.shape}")
    n = a.shape[0]
    if n == 0:
        return jnp.zeros((0,), jnp.float32)
    c = max(1, min(int(chunk), n))
    ap, _ = _pad_rows(a, c)
    bb = jnp.sum(b * b, -1)

    def per_chunk(x: Array) -> Array:
        d2 = (jnp.sum(x * x, -1)[:, None] - 2.0 * jnp.matmul(x, b.T, precision=_HI)
              + bb[None, :])
        return jnp.sqrt(jnp.maximum(jnp.min(d2, axis=1), 0.0))

    return jax.lax.map(per_chunk, ap.reshape(-1, c, a.shape[-1])).reshape(-1)[:n]


class ChamferResult(NamedTuple):
    """Output of :func:`chamfer_scan_mesh` (distances in the inputs' units)."""

    scan_to_mesh: Array  # (N,) point-to-triangle distances of the scan points
    mesh_to_scan: Array  # (V',) distances of the (used) mesh vertices to the nearest scan point
    symmetric: Array  # () mean of the two directional means


def chamfer_scan_mesh(points: Any, verts: Any, triangles: Any, vertex_mask: Any = None,
                      point_chunk: int = 256, triangle_chunk: int = 2048) -> ChamferResult:
    """Symmetric (chamfer) scan-mesh distance.

    scan -> mesh is exact point-to-triangle (:func:`scan_to_mesh`); mesh -> scan measures each
    mesh vertex (only ``vertex_mask`` ones when given, host-side selection) against the nearest
    scan point. ``symmetric = (mean(scan_to_mesh) + mean(mesh_to_scan)) / 2``.
    """
    s2m, _ = scan_to_mesh(points, verts, triangles, point_chunk, triangle_chunk)
    v = jnp.asarray(verts, jnp.float32)
    if vertex_mask is not None:
        import numpy as np

        v = v[np.asarray(vertex_mask, bool)]
    m2s = nearest_point_distance(v, points)
    return ChamferResult(s2m, m2s, 0.5 * (jnp.mean(s2m) + jnp.mean(m2s)))
