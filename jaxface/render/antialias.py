"""Analytic silhouette antialiasing of a hard render (after the design described in Laine et al.,
"Modular Primitives for High-Performance Differentiable Rendering", 2020; no code reused).

A *silhouette edge* is a mesh boundary edge or an edge whose two adjacent triangles face opposite
ways on screen. For every pair of horizontally or vertically adjacent pixels ``(A, B)``, the
segment between their centres may be crossed by a visible silhouette edge, with the occluding
surface on ``A``'s side. If it crosses at fraction ``t`` from ``A``'s centre, the occluder covers
the segment up to ``t``: when ``t > 1/2`` it spills into ``B``'s half and ``B`` becomes
``B + (A - B)(t - 1/2)``; when ``t < 1/2`` ``A``'s own half is partly uncovered and ``A`` becomes
``A + (B - A)(1/2 - t)``. Contributions of the (up to four) pairs of a pixel add up. The colours
are otherwise unchanged, visibility stays the exact hard visibility, and ``t`` is a
differentiable function of the edge's screen vertices, which gives gradients w.r.t. vertex
positions across silhouettes.

Finding the crossings: nvdiffrast looks for the edge only among the edges of the triangles that
cover the two pixel centres. That misses most silhouette pixels of a dense face mesh, whose
triangles are about a pixel or smaller: the boundary triangle whose edge crosses the segment
often covers neither centre (on the ICT face, 25-40 % of the silhouette pixel pairs were found).
Here every silhouette edge is instead walked along the pixel-centre rows and columns it crosses
(a stream of (edge, line) entries processed in static chunks, as in the rasteriser), which finds
every crossing whatever the triangle size. A crossing counts when the pixel on the edge's
triangle side is covered, the two pixels' visible triangles differ, and the edge's triangle
lies in front of the other pixel's surface there (or that pixel is background); among the
crossings of one pair the nearest (depth at the crossing) wins. Measured against an 8x8
supersampled render of the ICT face (64-224 px), this halves the coverage error of silhouette
pixels compared with the triangle-local search (``tests/render/test_antialias.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.render.rasterize import (
    Fragments,
    _centre_span,
    _chunk_owners,
    _depth_keys,
    _exclusive_offsets,
    _materialise,
    _scatter_min,
)

__all__ = ["antialias", "edge_neighbors"]

# Largest length of one crossing stream (int32 offsets stay exact below it).
_MAX_STREAM = 2**31 - 1


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


def _edge_table(sv: jax.Array, tri: jax.Array, nbr: jax.Array):
    """Per edge instance ``e = 3 f + k`` (the edge of triangle ``f`` opposite its vertex ``k``):
    endpoints ordered so that the triangle lies on the side where the edge function
    ``(x1 - x0)(py - y0) - (y1 - y0)(px - x0)`` is >= 0, and whether the instance is the one
    silhouette edge kept for its mesh edge.

    Returns ``(ends (E, 6) = x0 y0 z0 x1 y1 z1, ends_id (E, 2) int32, keep (E,) bool,
    p (F, 9))`` with ``E = 3F``; ``ends_id`` are the endpoints' vertex indices.
    """
    nf = tri.shape[0]
    p = sv[tri]  # (F, 3 corners, 3 coordinates)
    area = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (
        p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    sgn = jnp.sign(jax.lax.stop_gradient(area))
    nb_safe = jnp.where(nbr >= 0, nbr, 0)
    sgn_nb = sgn[nb_safe]
    # a silhouette edge: a boundary, or its two triangles face opposite ways on screen (or the
    # other one is degenerate); of the two instances of a fold edge, the one of the triangle
    # with positive signed area is kept (both lie on the same side of the edge on screen). A
    # triangle given as its own neighbour faces its own way: never a silhouette
    keep = (sgn[:, None] != 0) & (
        (nbr < 0) | (sgn_nb == 0) | ((sgn_nb != sgn[:, None]) & (sgn[:, None] > 0)))
    ends, ends_id = [], []
    # positive area: the triangle is on the edge function's positive side of a -> b
    pos = sgn > 0
    for k in range(3):
        a, b = p[:, (k + 1) % 3], p[:, (k + 2) % 3]
        ends.append(jnp.concatenate([jnp.where(pos[:, None], a, b),
                                     jnp.where(pos[:, None], b, a)], axis=1))
        ia, ib = tri[:, (k + 1) % 3], tri[:, (k + 2) % 3]
        ends_id.append(jnp.stack([jnp.where(pos, ia, ib), jnp.where(pos, ib, ia)], axis=1))
    ends = jnp.stack(ends, axis=1).reshape(3 * nf, 6)
    ends_id = jnp.stack(ends_id, axis=1).reshape(3 * nf, 2)
    return ends, ends_id, keep.reshape(-1), p.reshape(nf, 9)


def _row_count(lo: jax.Array, hi: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """First index and count of the pixel-centre lines ``i + 0.5`` (``0 <= i < n``) in
    ``[lo, hi]``."""
    first, last = _centre_span(lo, hi, n)
    return first, jnp.maximum(last - first + 1.0, 0.0)


def _winning_edges(ends, keep, p, tid, depth, h: int, wd: int, chunk: int) -> jax.Array:
    """Non-differentiable: for every pixel pair, the silhouette edge instance (index into
    ``ends``) whose crossing of the segment between the two pixel centres is used, ``-1`` if
    none. Pairs are numbered vertical first (``(H - 1) * W``, pixel ``(i, j)`` with
    ``(i + 1, j)``), then horizontal (``H * (W - 1)``, ``(i, j)`` with ``(i, j + 1)``).

    Every silhouette edge is walked along the pixel-centre rows and columns it crosses (a
    stream of (edge, line) entries in static chunks, as in the rasteriser). A crossing is kept
    when the pixel on the edge's inner side is covered, the pair's visible triangles differ, and
    the edge's triangle lies in front of the outer pixel's surface there (or it is background);
    of a pair's crossings, the nearest (depth at the crossing) wins.
    """
    ends = jax.lax.stop_gradient(ends)
    p = jax.lax.stop_gradient(p)
    depth = jax.lax.stop_gradient(depth)
    n_vert = (h - 1) * wd
    n_pairs = n_vert + h * (wd - 1)
    x0, y0, z0, x1, y1, z1 = jnp.unstack(ends, axis=1)
    finite = jnp.all(jnp.isfinite(ends), axis=1)
    big = 4.0 * max(h, wd) + 8.0
    cl = functools.partial(jnp.clip, min=-big, max=big)
    # rows crossed (horizontal pairs), columns crossed (vertical pairs)
    r0, nr = _row_count(cl(jnp.minimum(y0, y1)), cl(jnp.maximum(y0, y1)), h)
    c0, nc = _row_count(cl(jnp.minimum(x0, x1)), cl(jnp.maximum(x0, x1)), wd)
    ok = keep & finite
    nr = jnp.where(ok & (y0 != y1), nr, 0.0)
    nc = jnp.where(ok & (x0 != x1), nc, 0.0)
    count = (nr + nc).astype(jnp.int32)
    tab_all = jnp.stack([x0, y0, z0, x1, y1, z1, r0, nr, c0], axis=1)
    tid_f = tid.reshape(-1)
    dep_f = depth.reshape(-1)

    def body(c, tab, offsets, total, first):
        k, buf = c
        e, f, local = _chunk_owners(k * chunk, offsets, chunk, tab.shape[0])
        row = tab[e]
        e = e + first
        ex0, ey0, ez0, ex1, ey1, ez1, er0, enr, ec0 = jnp.unstack(row, axis=1)
        lf = local.astype(jnp.float32)
        is_row = lf < enr
        dx, dy = ex1 - ex0, ey1 - ey0
        # a row line y = i + 0.5 (horizontal pair) or a column line x = j + 0.5 (vertical)
        line = jnp.where(is_row, er0 + lf, ec0 + lf - enr) + 0.5
        u = jnp.where(is_row, (line - ey0) / jnp.where(dy != 0, dy, 1.0),
                      (line - ex0) / jnp.where(dx != 0, dx, 1.0))
        along = jnp.where(is_row, ex0 + u * dx, ey0 + u * dy)  # crossing coordinate on the line
        q = jnp.floor(along - 0.5)  # the lower pixel of the pair along the line
        n_along = jnp.where(is_row, wd, h)
        inb = (f < total) & (q >= 0) & (q <= n_along - 2.0)
        qc = jnp.clip(q, 0, jnp.maximum(n_along - 2.0, 0.0))
        # pixel centres of the pair (lo, hi) and their flat pixel indices
        lx = jnp.where(is_row, qc + 0.5, line)
        ly = jnp.where(is_row, line, qc + 0.5)
        hx = jnp.where(is_row, lx + 1.0, lx)
        hy = jnp.where(is_row, ly, ly + 1.0)
        li = (ly - 0.5).astype(jnp.int32) * wd + (lx - 0.5).astype(jnp.int32)
        hi = (hy - 0.5).astype(jnp.int32) * wd + (hx - 0.5).astype(jnp.int32)
        e_lo = dx * (ly - ey0) - dy * (lx - ex0)
        e_hi = dx * (hy - ey0) - dy * (hx - ex0)
        lo_in = (e_lo >= 0) & (e_hi < 0)
        hi_in = (e_hi >= 0) & (e_lo < 0)
        ia = jnp.where(lo_in, li, hi)  # the pixel on the triangle's side
        ib = jnp.where(lo_in, hi, li)
        ta, tb = tid_f[ia], tid_f[ib]
        # the edge's triangle (plane through its three vertices) at the outer pixel's centre
        pr = p[e // 3]
        bx, by = jnp.where(lo_in, hx, lx), jnp.where(lo_in, hy, ly)
        px_, py_, pz_ = pr[:, 0::3], pr[:, 1::3], pr[:, 2::3]
        w = []
        for kk in range(3):
            i_, j_ = (kk + 1) % 3, (kk + 2) % 3
            w.append((px_[:, j_] - px_[:, i_]) * (by - py_[:, i_])
                     - (py_[:, j_] - py_[:, i_]) * (bx - px_[:, i_]))
        area = w[0] + w[1] + w[2]
        z_b = (w[0] * pz_[:, 0] + w[1] * pz_[:, 1] + w[2] * pz_[:, 2]) / jnp.where(
            area != 0, area, 1.0)
        in_front = (tb < 0) | (z_b < dep_f[ib])
        valid = inb & (lo_in | hi_in) & (ta >= 0) & (ta != tb) & in_front & (area != 0)
        zc = (ez0 + u * (ez1 - ez0)).astype(jnp.float32)
        valid = valid & jnp.isfinite(zc)
        pair = jnp.where(is_row, n_vert + li - (li // wd), li)
        pair = jnp.where(valid, pair, n_pairs)
        with jax.enable_x64(True):
            key = _depth_keys(zc, e, valid)
            return k + 1, _scatter_min(buf, pair, key)

    with jax.enable_x64(True):
        buf = jnp.full((n_pairs,), 2**64 - 1, jnp.uint64)
    # an edge crosses at most H + W lines: edges are taken in static groups small enough that
    # the int32 stream offsets stay exact (one group for any ordinary mesh and image)
    ne = tab_all.shape[0]
    group = max(1, (_MAX_STREAM - chunk) // (h + wd))
    for first in range(0, ne, group):
        tab = tab_all[first:first + group]
        offsets, total = _exclusive_offsets(count[first:first + group])
        n_chunks = (total + chunk - 1) // chunk
        step = functools.partial(body, tab=tab, offsets=offsets, total=total, first=first)
        buf = jax.lax.while_loop(lambda c, n=n_chunks: c[0] < n, step, (jnp.int32(0), buf))[1]
    with jax.enable_x64(True):
        low = (buf & jnp.uint64(0xFFFFFFFF)).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(low, jnp.int32)


def _aa_single(color, tid, depth, sv, tri, nbr, chunk):
    h, wd = tid.shape
    if tri.shape[0] == 0 or h * wd < 2:
        return color
    ends, ends_id, keep, p = _edge_table(sv, tri, nbr)
    n_vert = (h - 1) * wd
    win = _winning_edges(ends, keep, p, tid, depth, h, wd, chunk)
    planes = [win[:n_vert].reshape(h - 1, wd), win[n_vert:].reshape(h, wd - 1)]
    # the winners' endpoints straight from the vertices, each vertex's x + iy as one complex
    # value: transposed, two complex scatter-adds into (V,) per axis (the edge table's
    # construction is not differentiated at all)
    xy = jax.lax.complex(sv[:, 0], sv[:, 1])
    nv = sv.shape[0]
    with jax.enable_x64(True):  # both endpoint ids in one 64-bit word: one gather per pair
        ends_pair = ((ends_id[:, 0].astype(jnp.uint64) << jnp.uint64(32))
                     | ends_id[:, 1].astype(jnp.uint64))
    ii, jj = jnp.meshgrid(jnp.arange(h, dtype=sv.dtype) + 0.5, jnp.arange(wd, dtype=sv.dtype) + 0.5,
                          indexing="ij")
    chans = list(jnp.unstack(color, axis=-1))  # per-channel planes
    delta = [jnp.zeros_like(c) for c in chans]
    for axis in (0, 1):  # vertical pairs (rows i, i+1), horizontal pairs (cols j, j+1)
        def lo(a, axis=axis):
            return jax.lax.slice_in_dim(a, 0, a.shape[axis] - 1, axis=axis)

        def hi(a, axis=axis):
            return jax.lax.slice_in_dim(a, 1, a.shape[axis], axis=axis)

        e = planes[axis]
        has = e >= 0
        # endpoint vertex ids (nv, out of range, for pairs with no crossing: zeros forward,
        # dropped in the transposed scatter)
        with jax.enable_x64(True):
            ab = jnp.take(ends_pair, jnp.where(has, e, ends_pair.shape[0]), mode="fill",
                          fill_value=0)
            ia = (ab >> jnp.uint64(32)).astype(jnp.int32)
            ib = (ab & jnp.uint64(0xFFFFFFFF)).astype(jnp.int32)
        ia, ib = jnp.where(has, ia, nv), jnp.where(has, ib, nv)
        a, b = (jnp.take(xy, i, mode="fill", fill_value=0) for i in (ia, ib))
        x0, y0, x1, y1 = jnp.real(a), jnp.imag(a), jnp.real(b), jnp.imag(b)
        dx, dy = x1 - x0, y1 - y0
        e_lo = dx * (lo(ii) - y0) - dy * (lo(jj) - x0)
        e_hi = dx * (hi(ii) - y0) - dy * (hi(jj) - x0)
        # the pixel on the edge's inner side (edge function >= 0) is the occluder "A"; the
        # crossing is at fraction t = e_A / (e_A - e_B) of the segment from A's centre
        a_lo = jax.lax.stop_gradient(e_lo >= e_hi)
        e_a = jnp.where(a_lo, e_lo, e_hi)
        e_b = jnp.where(a_lo, e_hi, e_lo)
        den = e_a - e_b
        good = has & (den > 0)
        t = jnp.clip(jnp.where(good, e_a / jnp.where(good, den, 1.0), 0.0), 0.0, 1.0)
        # A's half partly uncovered (t < 1/2): A moves towards B; B's half partly covered
        # (t > 1/2): B moves towards A
        w_a = jnp.where(good, jnp.maximum(0.5 - t, 0.0), 0.0)
        w_b = jnp.where(good, jnp.maximum(t - 0.5, 0.0), 0.0)
        # weights of the lower pixel (towards the upper one) and of the upper (towards lower)
        w_lo = jnp.where(a_lo, w_a, w_b)
        w_hi = jnp.where(a_lo, w_b, w_a)
        # computed once (else XLA:CPU fuses the whole crossing computation into every channel
        # of both pixels of every pair); with no differing pair the weights are zeros anyway
        w_lo, w_hi = _materialise((w_lo, w_hi), jnp.any(has))
        pad_a = [(0, 0), (0, 0)]
        pad_b = [(0, 0), (0, 0)]
        pad_a[axis] = (0, 1)
        pad_b[axis] = (1, 0)
        for c, ch in enumerate(chans):
            d = hi(ch) - lo(ch)
            delta[c] = delta[c] + jnp.pad(d * w_lo, pad_a) - jnp.pad(d * w_hi, pad_b)
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
        concrete triangles; pass it explicitly under ``jit`` with traced triangles). An entry
        equal to the triangle's own index marks an edge that is never a silhouette (e.g. the
        boundary of a region cut out of a larger surface and composited over a photo of it).

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
    h, wd = tid.shape[-2:]
    # crossings per chunk: a silhouette of perimeter ~ 2 (H + W) crosses about that many lines
    chunk = int(min(max(2048, 8 * (h + wd)), 2**15))
    if tid.ndim == 3:
        # one image after the other (a vmapped conditional would become a select, which XLA
        # fuses again: see _materialise)
        return jax.lax.map(lambda a: _aa_single(a[0], a[1], a[2], a[3], tri, nbr, chunk),
                           (color, tid, fragments.depth, sv))
    return _aa_single(color, tid, fragments.depth, sv, tri, nbr, chunk)
