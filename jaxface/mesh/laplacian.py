"""Mesh Laplacians: cotangent and uniform (graph), sparse on the host and jit-friendly in JAX.

Sign convention (positive semi-definite):

    L_ij = -(cot a_ij + cot b_ij) / 2   (i != j, a and b the angles opposite edge ij)
    L_ii = -sum_{j != i} L_ij

so ``(L x)_i = sum_j w_ij (x_i - x_j)`` with ``w_ij = (cot a + cot b) / 2``; ``L @ 1 = 0`` and
``x^T L x = sum_edges w_ij |x_i - x_j|^2`` (the Dirichlet energy for positive weights).

Degenerate triangles: a cotangent is ``dot(u, v) / |u x v|`` with ``|u x v|`` clamped below by
``min_sin * |u| |v|``, so ``|cot| <= 1 / min_sin`` (1e4 by default) and needle/collinear
triangles give large but finite weights; a triangle with a zero-length edge gives 0 for the
angles at that edge's ends. Values and gradients stay finite (double-where).

JIT form: ``cotangent_weights`` returns one weight per triangle corner (``3T`` half-edge
entries, an interior edge appears twice and the two halves add up); ``laplacian_apply``
computes ``L @ x`` from any such edge list with ``segment_sum``.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from jaxface.mesh.normals import face_areas
from jaxface.mesh.topology import _n_vertices, _tris, edges

Array = jax.Array
AreaKind = Literal["barycentric", "voronoi"]

__all__ = [
    "corner_cotangents",
    "cotangent_weights",
    "uniform_weights",
    "laplacian_apply",
    "laplacian_matrix",
    "cotangent_laplacian",
    "uniform_laplacian",
    "vertex_areas",
    "mass_matrix",
]

DEFAULT_MIN_SIN = 1e-4


# ---------------------------------------------------------------------------------------------
# JAX (jit / vmap / grad)
# ---------------------------------------------------------------------------------------------


def _cot_jax(u: Array, v: Array, min_sin: float) -> Array:
    """Cotangent of the angle between ``u`` and ``v`` (..., 3), clamped (see module doc)."""
    dot = jnp.sum(u * v, axis=-1)
    cr = jnp.cross(u, v)
    cr2 = jnp.sum(cr * cr, axis=-1)
    uv2 = jnp.sum(u * u, axis=-1) * jnp.sum(v * v, axis=-1)
    ok = uv2 > 0
    denom2 = jnp.where(ok, jnp.maximum(cr2, (min_sin * min_sin) * uv2), 1.0)
    return jnp.where(ok, dot * jax.lax.rsqrt(denom2), 0.0)


def _corner_vectors(verts: Array, triangles: Any) -> tuple[Array, Array]:
    """(..., T, 3, 3) edge vectors from corner k to corners k+1 and k+2 of each triangle."""
    q = verts[..., jnp.asarray(triangles), :]  # (..., T, 3, 3)
    return jnp.roll(q, -1, axis=-2) - q, jnp.roll(q, -2, axis=-2) - q


def corner_cotangents(verts: Array, triangles: Any, min_sin: float = DEFAULT_MIN_SIN) -> Array:
    """(..., T, 3) cotangent of each triangle's interior angle at corner k (clamped)."""
    u, w = _corner_vectors(verts, triangles)
    return _cot_jax(u, w, min_sin)


def cotangent_weights(
    verts: Array, triangles: Any, min_sin: float = DEFAULT_MIN_SIN
) -> tuple[Array, Array, Array]:
    """Half-edge cotangent weights, differentiable w.r.t. ``verts``.

    Args:
      verts: (V, 3) positions (vmap for batches).
      triangles: (T, 3) vertex ids.
      min_sin: lower clamp on the sine of an angle (|cot| <= 1/min_sin).

    Returns:
      edge_i, edge_j: (3T,) int32, entry ``3t + k`` is the edge opposite corner k of triangle t,
        ``(t[(k+1)%3], t[(k+2)%3])``.
      w: (3T,) ``cot(angle at corner k) / 2``. Summed over both halves of an interior edge this
        is ``(cot a + cot b) / 2``.
    """
    tri = jnp.asarray(triangles, dtype=jnp.int32)
    cot = corner_cotangents(verts, tri, min_sin)
    ei = jnp.stack([tri[:, 1], tri[:, 2], tri[:, 0]], axis=1).reshape(-1)
    ej = jnp.stack([tri[:, 2], tri[:, 0], tri[:, 1]], axis=1).reshape(-1)
    return ei, ej, 0.5 * cot.reshape(cot.shape[:-2] + (-1,))


def uniform_weights(triangles: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique undirected edges with weight 1 (graph Laplacian ``D - A``), host-side.

    Returns:
      edge_i, edge_j: (E,) int32; w: (E,) float32 ones.
    """
    e = edges(triangles)
    return e[:, 0].astype(np.int32), e[:, 1].astype(np.int32), np.ones(e.shape[0], np.float32)


def laplacian_apply(edge_i: Any, edge_j: Any, w: Array, x: Array) -> Array:
    """``L @ x`` for the Laplacian with edge weights ``w``: ``(L x)_i = sum_j w_ij (x_i - x_j)``.

    Each listed edge contributes in both directions (list an undirected edge once, or as
    several halves whose weights add).

    Args:
      edge_i, edge_j: (E,) vertex ids.
      w: (E,) weights.
      x: (V,) or (V, C) values per vertex; V = ``x.shape[0]`` (static).

    Returns:
      Same shape as ``x``.
    """
    ei = jnp.asarray(edge_i)
    ej = jnp.asarray(edge_j)
    n = x.shape[0]
    d = x[ei] - x[ej]
    wd = w.reshape(w.shape + (1,) * (x.ndim - 1)) * d
    return jax.ops.segment_sum(wd, ei, num_segments=n) - jax.ops.segment_sum(wd, ej, num_segments=n)


def vertex_areas(verts: Array, triangles: Any, kind: AreaKind = "barycentric") -> Array:
    """(V,) lumped mass per vertex; sums to the total surface area.

    ``"barycentric"``: a third of each incident triangle. ``"voronoi"``: the mixed Voronoi
    area of Meyer et al. 2003 (Voronoi region for non-obtuse triangles; for obtuse ones half
    the area to the obtuse corner and a quarter to the others).
    """
    tri = jnp.asarray(triangles, dtype=jnp.int32)
    area = face_areas(verts, tri)  # (T,)
    nv = verts.shape[0]
    if kind == "barycentric":
        per = jnp.repeat(area[:, None] / 3.0, 3, axis=1)
    elif kind == "voronoi":
        u, w = _corner_vectors(verts, tri)  # (T, 3, 3): corner k -> k+1, corner k -> k+2
        cot = _cot_jax(u, w, DEFAULT_MIN_SIN)  # (T, 3)
        dots = jnp.sum(u * w, axis=-1)  # < 0: obtuse at corner k
        obtuse_any = jnp.any(dots < 0, axis=-1, keepdims=True)
        # Voronoi share of corner k: (|e_k,k+1|^2 cot_{k+2} + |e_k,k+2|^2 cot_{k+1}) / 8
        vor = (
            jnp.sum(u * u, -1) * jnp.roll(cot, -2, axis=-1)
            + jnp.sum(w * w, -1) * jnp.roll(cot, -1, axis=-1)
        ) / 8.0
        mixed = jnp.where(dots < 0, area[:, None] / 2.0, area[:, None] / 4.0)
        per = jnp.where(obtuse_any, mixed, vor)
    else:
        raise ValueError(f"kind must be 'barycentric' or 'voronoi', got {kind!r}")
    return jax.ops.segment_sum(per.reshape(-1), tri.reshape(-1), num_segments=nv)


# ---------------------------------------------------------------------------------------------
# Host-side sparse matrices (float64)
# ---------------------------------------------------------------------------------------------


def laplacian_matrix(edge_i: Any, edge_j: Any, w: Any, n_vertices: int) -> sp.csr_matrix:
    """The (V, V) ``scipy.sparse.csr_matrix`` of an edge list (same meaning as
    ``laplacian_apply``)."""
    ei = np.asarray(edge_i, np.int64)
    ej = np.asarray(edge_j, np.int64)
    w = np.asarray(w, np.float64)
    if not (ei.shape == ej.shape == w.shape):
        raise ValueError(f"edge_i {ei.shape}, edge_j {ej.shape}, w {w.shape} must match")
    if ei.size and (min(ei.min(), ej.min()) < 0 or max(ei.max(), ej.max()) >= n_vertices):
        raise ValueError(f"edge ids out of range [0, {n_vertices})")
    off = sp.coo_matrix(
        (np.concatenate([-w, -w]), (np.concatenate([ei, ej]), np.concatenate([ej, ei]))),
        shape=(n_vertices, n_vertices),
    ).tocsr()
    diag = -np.asarray(off.sum(axis=1)).reshape(-1)
    lap = (off + sp.diags(diag)).tocsr()
    lap.sum_duplicates()
    return lap


def _cot_np(u: np.ndarray, v: np.ndarray, min_sin: float) -> np.ndarray:
    dot = np.einsum("ij,ij->i", u, v)
    cr = np.linalg.norm(np.cross(u, v), axis=1)
    uv = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    den = np.maximum(cr, min_sin * uv)
    out = np.zeros_like(dot)
    ok = uv > 0
    out[ok] = dot[ok] / den[ok]
    return out


def cotangent_laplacian(
    verts: Any, triangles: Any, min_sin: float = DEFAULT_MIN_SIN
) -> sp.csr_matrix:
    """(V, V) cotangent Laplacian (float64 CSR, PSD sign convention; see module doc)."""
    v = np.asarray(verts, np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {v.shape}")
    t = _tris(triangles)
    n = _n_vertices(t, v.shape[0])
    ei, ej, w = [], [], []
    for k in range(3):
        a, b, c = t[:, k], t[:, (k + 1) % 3], t[:, (k + 2) % 3]
        cot = _cot_np(v[b] - v[a], v[c] - v[a], min_sin)
        ei.append(b)
        ej.append(c)
        w.append(0.5 * cot)
    return laplacian_matrix(np.concatenate(ei), np.concatenate(ej), np.concatenate(w), n)


def uniform_laplacian(triangles: Any, n_vertices: int | None = None) -> sp.csr_matrix:
    """(V, V) graph Laplacian ``D - A`` of the mesh's edge graph (float64 CSR)."""
    t = _tris(triangles)
    n = _n_vertices(t, n_vertices)
    ei, ej, w = uniform_weights(t)
    return laplacian_matrix(ei, ej, w, n)


def mass_matrix(verts: Any, triangles: Any, kind: AreaKind = "barycentric") -> sp.csr_matrix:
    """(V, V) diagonal lumped mass matrix (float64 CSR); NumPy twin of ``vertex_areas``."""
    v = np.asarray(verts, np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {v.shape}")
    t = _tris(triangles)
    n = _n_vertices(t, v.shape[0])
    p = [v[t[:, k]] for k in range(3)]
    area = 0.5 * np.linalg.norm(np.cross(p[1] - p[0], p[2] - p[0]), axis=1)
    if kind == "barycentric":
        per = np.repeat(area[:, None] / 3.0, 3, axis=1)
    elif kind == "voronoi":
        dots = [
            np.einsum("ij,ij->i", p[(k + 1) % 3] - p[k], p[(k + 2) % 3] - p[k]) for k in range(3)
        ]
        cot = [
            _cot_np(p[(k + 1) % 3] - p[k], p[(k + 2) % 3] - p[k], DEFAULT_MIN_SIN) for k in range(3)
        ]
        obtuse_any = (dots[0] < 0) | (dots[1] < 0) | (dots[2] < 0)
        cols = []
        for k in range(3):
            j, m = (k + 1) % 3, (k + 2) % 3
            ekj = np.sum((p[j] - p[k]) ** 2, axis=1)
            ekm = np.sum((p[m] - p[k]) ** 2, axis=1)
            vor = (ekj * cot[m] + ekm * cot[j]) / 8.0
            mixed = np.where(dots[k] < 0, area / 2.0, area / 4.0)
            cols.append(np.where(obtuse_any, mixed, vor))
        per = np.stack(cols, axis=1)
    else:
        raise ValueError(f"kind must be 'barycentric' or 'voronoi', got {kind!r}")
    a = np.bincount(t.reshape(-1), weights=per.reshape(-1), minlength=n)
    return sp.diags(a).tocsr()
