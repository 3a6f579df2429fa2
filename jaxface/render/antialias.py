"""Analytic silhouette antialiasing of a hard render (after the design described in Laine et al.,
"Modular Primitives for High-Performance Differentiable Rendering", 2020; no code reused).

For every pair of horizontally or vertically adjacent pixels ``(A, B)`` whose visible triangles
differ, we look for a *silhouette edge* of the triangle of one pixel that crosses the segment
between the two pixel centres. A silhouette edge is a mesh boundary edge or an edge whose two
adjacent triangles face opposite ways on screen. The candidate edge must also separate the pixel
centres (the owner's centre on its inside) and its triangle must lie in front of the other
pixel's surface there (or the other pixel is background).

If the edge of the triangle covering ``A`` crosses the segment at fraction ``t`` from ``A``'s
centre, the occluding surface covers the segment up to ``t``. When ``t > 1/2`` it spills into
``B``'s half and ``B`` becomes ``B + (A - B)(t - 1/2)``; when ``t < 1/2`` ``A``'s own half is
partly uncovered and ``A`` becomes ``A + (B - A)(1/2 - t)``. Contributions of the (up to four)
pairs of a pixel add up. The colours are otherwise unchanged, visibility stays the exact hard
visibility, and ``t`` is a differentiable function of the edge's screen vertices, which gives
gradients w.r.t. vertex positions across silhouettes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.render.rasterize import Fragments, _gather_columns

__all__ = ["antialias", "edge_neighbors"]


def edge_neighbors(triangles: np.ndarray) -> np.ndarray:
    """Triangle adjacency across edges: ``(F, 3)`` int32, entry ``k`` of triangle ``f`` is the
    other triangle sharing edge ``(v[k+1], v[k+2])`` (the edge opposite vertex ``k``), ``-1``
    for a boundary edge. At non-manifold edges (3+ triangles) every edge counts as boundary.

    Needs concrete (NumPy) triangles; compute it once per mesh and pass it to :func:`antialias`.
    """
    tri = np.asarray(triangles)
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"triangles must have shape (F, 3), got {tri.shape}")
    nf = tri.shape[0]
    a = np.concatenate([tri[:, 1], tri[:, 2], tri[:, 0]]).astype(np.int64)
    b = np.concatenate([tri[:, 2], tri[:, 0], tri[:, 1]]).astype(np.int64)
    key = np.minimum(a, b) * (int(tri.max(initial=0)) + 1) + np.maximum(a, b)
    owner = np.tile(np.arange(nf), 3)
    slot = np.repeat(np.arange(3), nf)
    order = np.argsort(key, kind="stable")
    ks = key[order]
    out = np.full((nf, 3), -1, np.int32)
    start = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    counts = np.diff(np.r_[start, ks.size])
    pairs = start[counts == 2]
    i0, i1 = order[pairs], order[pairs + 1]
    out[owner[i0], slot[i0]] = owner[i1]
    out[owner[i1], slot[i1]] = owner[i0]
    return out


def _crossing(p: list, sil: list, own_c: tuple, oth_c: tuple, oth_depth: jax.Array,
              oth_bg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Crossing fraction of a silhouette edge of the owner's triangle along own->other.

    Everything is a same-shape plane (struct-of-arrays: no length-3 axis, whose broadcasts
    and reductions are slow on XLA:CPU, particularly transposed).

    Args:
      p: 9 planes ``x0 y0 z0 x1 y1 z1 x2 y2 z2``, the owner triangle's screen vertices.
      sil: 3 bool planes, edge ``k`` (opposite vertex ``k``) is a silhouette edge.
      own_c, oth_c: ``(x, y)`` planes of the owner's and the other pixel's centres.
      oth_depth, oth_bg: the other pixel's depth and whether it is background.

    Returns:
      ``(valid, t)`` planes.
    """
    x, y, z = p[0::3], p[1::3], p[2::3]
    area = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
    s = jnp.sign(area)
    t = jnp.zeros_like(area)
    valid = jnp.zeros(area.shape, bool)
    e_oth = []
    # edges in reverse, so that the first valid edge wins (a pixel segment rarely crosses two
    # silhouette edges of one triangle)
    for k in (2, 1, 0):
        i, j = (k + 1) % 3, (k + 2) % 3
        ex, ey = x[j] - x[i], y[j] - y[i]
        ea = (ex * (own_c[1] - y[i]) - ey * (own_c[0] - x[i])) * s  # inside >= 0
        e_o = ex * (oth_c[1] - y[i]) - ey * (oth_c[0] - x[i])
        e_oth.append(e_o)
        eb = e_o * s
        okk = sil[k] & (ea >= 0) & (eb < 0)
        tk = ea / jnp.where(okk, ea - eb, 1.0)
        # the crossing point must lie on the edge segment
        cx = own_c[0] + tk * (oth_c[0] - own_c[0])
        cy = own_c[1] + tk * (oth_c[1] - own_c[1])
        l2 = ex * ex + ey * ey
        u = ((cx - x[i]) * ex + (cy - y[i]) * ey) / jnp.where(okk & (l2 > 0), l2, 1.0)
        okk = okk & (u >= 0) & (u <= 1)
        t = jnp.where(okk, tk, t)
        valid = valid | okk
    # the owner's plane must be in front of the other pixel's surface at the other centre
    safe_area = jnp.where(area != 0, area, 1.0)
    z_at = (e_oth[2] * z[0] + e_oth[1] * z[1] + e_oth[0] * z[2]) / safe_area
    valid = valid & (oth_bg | (z_at < oth_depth))
    return valid, jnp.where(valid, t, 0.0)


def _materialise(x, diff: jax.Array):
    """``x`` unchanged, computed once into memory: passed through a conditional on a runtime
    predicate (any differing pixel pair), which XLA cannot fuse across. Otherwise XLA:CPU fuses
    the whole crossing computation into every channel of both pixels of every pair (removing
    ``optimization_barrier`` on CPU), which made the pass several times slower. No pair
    differs -> zero weights, which is also the value of ``x`` then."""
    return jax.lax.cond(jnp.any(diff), lambda y: y, lambda y: jax.tree.map(jnp.zeros_like, y), x)


def _aa_single(color, tid, depth, sv, tri, nbr):
    h, wd = tid.shape
    nf = tri.shape[0]
    covered = tid >= 0
    p_all = sv[tri]  # (F, 3, 3)
    area = (p_all[:, 1, 0] - p_all[:, 0, 0]) * (p_all[:, 2, 1] - p_all[:, 0, 1]) - (
        p_all[:, 2, 0] - p_all[:, 0, 0]) * (p_all[:, 1, 1] - p_all[:, 0, 1])
    sgn = jnp.sign(jax.lax.stop_gradient(area))
    nb_safe = jnp.where(nbr >= 0, nbr, 0)
    sil = (nbr < 0) | (sgn[nb_safe] != sgn[:, None]) | (sgn[nb_safe] == 0)  # (F, 3)
    table = p_all.reshape(nf, 9)
    # per-pixel planes of the pixel's triangle, one gather per table column (transposed:
    # scalar scatter-adds from the cotangent planes); zeros and no silhouette on background
    p = _gather_columns(table, tid, covered)
    silp = _gather_columns(sil, tid, covered)
    dep = jax.lax.stop_gradient(depth)
    ii, jj = jnp.meshgrid(jnp.arange(h, dtype=sv.dtype) + 0.5, jnp.arange(wd, dtype=sv.dtype) + 0.5,
                          indexing="ij")
    chans = list(jnp.unstack(color, axis=-1))  # per-channel planes
    delta = [jnp.zeros_like(c) for c in chans]
    for axis in (0, 1):  # vertical pairs (rows i, i+1), horizontal pairs (cols j, j+1)
        def lo(a, axis=axis):
            return jax.lax.slice_in_dim(a, 0, a.shape[axis] - 1, axis=axis)

        def hi(a, axis=axis):
            return jax.lax.slice_in_dim(a, 1, a.shape[axis], axis=axis)

        ta, tb = lo(tid), hi(tid)
        diff = ta != tb
        ca, cb = (lo(jj), lo(ii)), (hi(jj), hi(ii))
        # A owns the silhouette
        va, t_a = _crossing([lo(q) for q in p], [lo(q) for q in silp], ca, cb, hi(dep), tb < 0)
        # B owns the silhouette (t measured from B)
        vb, t_b = _crossing([hi(q) for q in p], [hi(q) for q in silp], cb, ca, lo(dep), ta < 0)
        va = va & diff
        vb = vb & diff & ~va
        # owner A: t>1/2 -> B blends towards A; t<1/2 -> A blends towards B
        w_a = jnp.where(va, jnp.maximum(0.5 - t_a, 0.0), 0.0) + jnp.where(
            vb, jnp.maximum(t_b - 0.5, 0.0), 0.0)
        w_b = jnp.where(va, jnp.maximum(t_a - 0.5, 0.0), 0.0) + jnp.where(
            vb, jnp.maximum(0.5 - t_b, 0.0), 0.0)
        w_a, w_b = _materialise((w_a, w_b), diff)
        pad_a = [(0, 0), (0, 0)]
        pad_b = [(0, 0), (0, 0)]
        pad_a[axis] = (0, 1)
        pad_b[axis] = (1, 0)
        for c, ch in enumerate(chans):
            d = hi(ch) - lo(ch)
            delta[c] = delta[c] + jnp.pad(d * w_a, pad_a) - jnp.pad(d * w_b, pad_b)
    return jnp.stack([ch + dc for ch, dc in zip(chans, delta, strict=True)], axis=-1)


def antialias(
    color: jax.Array,
    fragments: Fragments,
    screen_vertices: jax.Array,
    triangles: jax.Array,
    neighbors: jax.Array | np.ndarray | None = None,
) -> jax.Array:
    """Antialias silhouette edges of a hard render (module docstring explains the method).

    Args:
      color: ``(H, W, C)`` or ``(B, H, W, C)`` shaded image (background already composited).
      fragments: the :class:`Fragments` the image was rendered from.
      screen_vertices: ``(V, 3)`` / ``(B, V, 3)`` the rasterised screen vertices.
      triangles: ``(F, 3)`` int.
      neighbors: ``(F, 3)`` from :func:`edge_neighbors` (computed here when ``None``, which needs
        concrete triangles; pass it explicitly under ``jit`` with traced triangles).

    Returns:
      the antialiased image, same shape as ``color``; differentiable w.r.t. ``color`` and
      ``screen_vertices`` (through the edge crossing positions).
    """
    if neighbors is None:
        try:
            neighbors = edge_neighbors(np.asarray(triangles))
        except (jax.errors.TracerArrayConversionError,
                jax.errors.ConcretizationTypeError) as exc:
            raise ValueError(
                "antialias needs `neighbors=edge_neighbors(triangles)` when triangles are traced"
            ) from exc
    color = jnp.asarray(color)
    sv = jnp.asarray(screen_vertices)
    tri = jnp.asarray(triangles, jnp.int32)
    nbr = jnp.asarray(neighbors, jnp.int32)
    tid = fragments.triangle_id
    if nbr.shape != tri.shape:
        raise ValueError(f"neighbors must have shape {tuple(tri.shape)}, got {tuple(nbr.shape)}")
    if color.shape[:-1] != tid.shape:
        raise ValueError(
            f"color {tuple(color.shape)} must be fragments' shape {tuple(tid.shape)} plus channels"
        )
    if tid.ndim == 3:
        # one image after the other (a vmapped conditional would become a select, which XLA
        # fuses again: see _materialise)
        return jax.lax.map(lambda a: _aa_single(a[0], a[1], a[2], a[3], tri, nbr),
                           (color, tid, fragments.depth, sv))
    return _aa_single(color, tid, fragments.depth, sv, tri, nbr)
