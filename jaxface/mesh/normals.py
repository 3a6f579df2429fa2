"""Face and vertex normals (pure JAX: jit, vmap, grad; NaN-safe at degenerate geometry).

Normalisation uses the "double where" trick: a zero vector (zero-area face, isolated vertex,
vertex whose incident normals cancel) normalises to the zero vector, and its gradient is zero
instead of NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["face_normals", "face_areas", "vertex_normals", "safe_normalize"]


def safe_normalize(x: Array, axis: int = -1, eps: float = 0.0) -> Array:
    """``x / |x|`` along ``axis``; vectors with ``|x|^2 <= eps`` (default: exactly zero) map to 0.

    Finite value and finite (zero) gradient at ``x = 0`` (double-where).
    """
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    ok = sq > eps
    inv = jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)
    return x * inv


def face_normals(verts: Array, triangles: Any, unit: bool = True) -> Array:
    """Per-face normals ``(v1 - v0) x (v2 - v0)`` (counter-clockwise = outward).

    Args:
      verts: (..., V, 3) vertex positions (leading batch dims allowed; or vmap).
      triangles: (T, 3) int vertex ids.
      unit: normalise to unit length (zero-area faces give the zero vector); with ``False`` the
        length is twice the triangle area.

    Returns:
      (..., T, 3) normals.
    """
    q = verts[..., jnp.asarray(triangles), :]  # (..., T, 3, 3)
    n = jnp.cross(q[..., 1, :] - q[..., 0, :], q[..., 2, :] - q[..., 0, :])
    return safe_normalize(n) if unit else n


def face_areas(verts: Array, triangles: Any) -> Array:
    """(..., T) triangle areas; NaN-safe gradient at zero area."""
    n = face_normals(verts, triangles, unit=False)
    sq = jnp.sum(n * n, axis=-1)
    ok = sq > 0
    return jnp.where(ok, 0.5 * jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)


def vertex_normals(verts: Array, triangles: Any, unit: bool = True) -> Array:
    """Area-weighted vertex normals: the sum of the unnormalised normals of incident faces.

    Args:
      verts: (..., V, 3) vertex positions.
      triangles: (T, 3) int vertex ids.
      unit: normalise (isolated vertices and cancelling normals give the zero vector with zero
        gradient).

    Returns:
      (..., V, 3) normals.
    """
    fn = face_normals(verts, triangles, unit=False)
    tri = jnp.asarray(triangles)
    corner_fn = jnp.repeat(fn, 3, axis=-2)  # (..., 3T, 3), row 3t + k for corner k of t
    acc = jnp.zeros_like(verts).at[..., tri.reshape(-1), :].add(corner_fn)
    return safe_normalize(acc) if unit else acc
