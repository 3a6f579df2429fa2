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

from jaxface.render.rasterize import Fragments

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


def _crossing(p, n_sil, own_c, oth_c, oth_depth, oth_bg):
    """Crossing fraction of a silhouette edge of the owner's triangle along own->other.

    p: (..., 3, 3) owner triangle vertices (x, y, z); n_sil: (..., 3) bool silhouette flags.
    Returns ``(valid (...), t (...))``.
    """
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (
        x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
    s = jnp.sign(area)
    ts, oks = [], []
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        ex, ey = x[..., j] - x[..., i], y[..., j] - y[..., i]

        def efun(c, ex=ex, ey=ey, i=i):
            return (ex * (c[1] - y[..., i]) - ey * (c[0] - x[..., i])) * s

        ea, eb = efun(own_c), efun(oth_c)  # inside >= 0
        den = ea - eb
        okk = n_sil[..., k] & (ea >= 0) & (eb < 0)
        t = ea / jnp.where(okk, den, 1.0)
        # the crossing point must lie on the edge segment
        cx = own_c[0] + t * (oth_c[0] - own_c[0])
        cy = own_c[1] + t * (oth_c[1] - own_c[1])
        l2 = ex * ex + ey * ey
        u = ((cx - x[..., i]) * ex + (cy - y[..., i]) * ey) / jnp.where(okk & (l2 > 0), l2, 1.0)
        okk = okk & (u >= 0) & (u <= 1)
        ts.append(jnp.where(okk, t, 0.0))
        oks.append(okk)
    oks = jnp.stack(oks, -1)
    ts = jnp.stack(ts, -1)
    # the first valid edge (a pixel segment rarely crosses two silhouette edges of one triangle)
    first = jnp.argmax(oks, axis=-1)
    valid = jnp.any(oks, axis=-1)
    t = jnp.take_along_axis(ts, first[..., None], -1)[..., 0]
    # the owner's plane must be in front of the other pixel's surface at the other centre
    e_oth = []
    for k in range(3):
        i, j = (k + 1) % 3, (k + 2) % 3
        e_oth.append((x[..., j] - x[..., i]) * (oth_c[1] - y[..., i])
                     - (y[..., j] - y[..., i]) * (oth_c[0] - x[..., i]))
    e_oth = jnp.stack(e_oth, -1)
    safe_area = jnp.where(area != 0, area, 1.0)
    z_at = jnp.sum(e_oth * z, -1) / safe_area
    valid = valid & (oth_bg | (z_at < oth_depth))
    return valid, jnp.where(valid, t, 0.0)


def _aa_single(color, tid, depth, sv, tri, nbr, cull_sign):
    h, wd = tid.shape
    nf = tri.shape[0]
    covered = tid >= 0
    safe = jnp.where(covered, tid, 0)
    p_all = sv[tri]  # (F, 3, 3)
    area = (p_all[:, 1, 0] - p_all[:, 0, 0]) * (p_all[:, 2, 1] - p_all[:, 0, 1]) - (
        p_all[:, 2, 0] - p_all[:, 0, 0]) * (p_all[:, 1, 1] - p_all[:, 0, 1])
    area = jax.lax.stop_gradient(area)
    sgn = jnp.sign(area)
    nb_safe = jnp.where(nbr >= 0, nbr, 0)
    sil = (nbr < 0) | (sgn[nb_safe] != sgn[:, None]) | (sgn[nb_safe] == 0)  # (F, 3)
    del nf, cull_sign
    table = jnp.concatenate([p_all.reshape(-1, 9), sil.astype(p_all.dtype)], axis=1)
    rows = table[safe]  # (H, W, 12)
    p = rows[..., :9].reshape(h, wd, 3, 3)
    silp = (rows[..., 9:] > 0.5) & covered[..., None]
    dep = jax.lax.stop_gradient(depth)
    jj, ii = jnp.meshgrid(jnp.arange(wd, dtype=p.dtype) + 0.5, jnp.arange(h, dtype=p.dtype) + 0.5)
    out = color
    delta = jnp.zeros_like(color)
    for axis in (0, 1):  # vertical pairs (rows i, i+1), horizontal pairs (cols j, j+1)
        def sl(a, lo, axis=axis):
            n = a.shape[axis]
            return jax.lax.slice_in_dim(a, 0, n - 1, axis=axis) if lo else \
                jax.lax.slice_in_dim(a, 1, n, axis=axis)
        ta, tb = sl(tid, True), sl(tid, False)
        diff = ta != tb
        ca = (sl(jj, True), sl(ii, True))
        cb = (sl(jj, False), sl(ii, False))
        col_a, col_b = sl(color, True), sl(color, False)
        # A owns the silhouette
        va, t_a = _crossing(sl(p, True), sl(silp, True), ca, cb, sl(dep, False), tb < 0)
        # B owns the silhouette (t measured from B)
        vb, t_b = _crossing(sl(p, False), sl(silp, False), cb, ca, sl(dep, True), ta < 0)
        va = va & diff
        vb = vb & diff & ~va
        # owner A: t>1/2 -> B blends towards A; t<1/2 -> A blends towards B
        wa_b = jnp.where(va, jnp.maximum(t_a - 0.5, 0.0), 0.0)[..., None]
        wa_a = jnp.where(va, jnp.maximum(0.5 - t_a, 0.0), 0.0)[..., None]
        wb_a = jnp.where(vb, jnp.maximum(t_b - 0.5, 0.0), 0.0)[..., None]
        wb_b = jnp.where(vb, jnp.maximum(0.5 - t_b, 0.0), 0.0)[..., None]
        d_a = (col_b - col_a) * (wa_a + wb_a)
        d_b = (col_a - col_b) * (wa_b + wb_b)
        n = color.shape[axis]
        pad_lo = [(0, 0)] * color.ndim
        pad_hi = [(0, 0)] * color.ndim
        pad_lo[axis] = (0, 1)
        pad_hi[axis] = (1, 0)
        delta = delta + jnp.pad(d_a, pad_lo) + jnp.pad(d_b, pad_hi)
        del n
    return out + delta


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
        return jax.vmap(lambda c, t, d, s: _aa_single(c, t, d, s, tri, nbr, 0))(
            color, tid, fragments.depth, sv)
    return _aa_single(color, tid, fragments.depth, sv, tri, nbr, 0)
