"""Hard (z-buffer) rasterisation in pure JAX.

Conventions (project-wide): screen vertices are ``(V, 3)`` with ``x`` right and ``y`` down in
pixels (OpenCV; pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, its centre is ``(j+0.5, i+0.5)``)
and ``z`` a depth where smaller is nearer. ``image_size`` is ``(H, W)``.

Algorithm (exact, no fixed capacity that can drop anything):

1. Per triangle, the clipped bounding box of the pixel *centres* it can cover gives a candidate
   count ``n_t = nx_t * ny_t``. An exclusive cumulative sum lays all candidate (triangle, pixel)
   pairs ("fragments") out on one line of length ``N = sum n_t``.
2. The line is processed in static-size chunks of ``fragment_chunk`` fragments inside a
   ``lax.while_loop`` that runs ``ceil(N / chunk)`` times, so every fragment is visited whatever
   the triangle sizes are. For each fragment: the inside test (edge functions evaluated relative to
   a vertex, inclusive on edges so that shared edges leave no holes), the interpolated depth, and a
   ``scatter-min`` of a 64-bit key into the z-buffer: the float32 depth's order-preserving bits in
   the high word, the int32 triangle id in the low word. One pass thus picks the nearest fragment
   and, among bitwise-equal depths, the smallest triangle id, deterministically (integer ``min``
   is order-independent, and each fragment's depth is computed once); there is no limit on the
   number of triangles and no depth quantisation. (The keys use 64-bit types locally, through
   ``jax.enable_x64``; everything else stays 32-bit.)
3. So that the int32 offsets stay exact whatever ``N`` is, triangles are grouped into
   consecutive "epochs" of about ``2**29`` tiles (an outer ``while_loop``; one epoch for any
   ordinary mesh, and no epoch bookkeeping when the sizes make one epoch certain).

Only the winning triangle's barycentrics are then computed per pixel (:func:`barycentric_from_ids`).

``triangle_id`` is not differentiable. ``barycentric`` and ``depth`` are recomputed from the
winning triangle's vertices with differentiable arithmetic, so gradients flow to
``screen_vertices`` (and ``w``) through interpolation; background and degenerate cases are guarded
with the double-``where`` trick so that gradients are never NaN.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass

__all__ = ["Fragments", "rasterize", "barycentric_from_ids"]

# Tiles per epoch (int32 offset arithmetic stays exact: an epoch holds < _EPOCH + 2**24 tiles).
_EPOCH = float(2**29)


@pytree_dataclass
class Fragments:
    """Output of :func:`rasterize` (a pytree; a leading batch axis when batched).

    Attributes:
      triangle_id: ``(..., H, W)`` int32, the visible triangle per pixel, ``-1`` for background.
      barycentric: ``(..., H, W, 3)`` float32, barycentric coordinates of the pixel centre in the
        visible triangle (perspective-correct when ``w`` was given); zeros on background.
      depth: ``(..., H, W)`` float32, interpolated depth; ``+inf`` on background.
    """

    triangle_id: jax.Array
    barycentric: jax.Array
    depth: jax.Array

    @property
    def mask(self) -> jax.Array:
        """``(..., H, W)`` bool, True where a triangle covers the pixel centre."""
        return self.triangle_id >= 0


def _check_inputs(screen_vertices: Any, triangles: Any, image_size: Any, w: Any) -> tuple:
    sv = jnp.asarray(screen_vertices)
    tri = jnp.asarray(triangles)
    if sv.ndim not in (2, 3) or sv.shape[-1] != 3:
        raise ValueError(
            f"screen_vertices must have shape (V, 3) or (B, V, 3), got {tuple(sv.shape)}"
        )
    if tri.ndim != 2 or tri.shape[-1] != 3:
        raise ValueError(f"triangles must have shape (F, 3), got {tuple(tri.shape)}")
    if not jnp.issubdtype(tri.dtype, jnp.integer):
        raise ValueError(f"triangles must be an integer array, got dtype {tri.dtype}")
    try:
        h, wd = (int(s) for s in image_size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image_size must be a pair (H, W) of ints, got {image_size!r}") from exc
    if h <= 0 or wd <= 0:
        raise ValueError(f"image_size must be positive, got {(h, wd)}")
    if h * wd >= 2**24:
        raise ValueError(f"image_size {(h, wd)} has more than 2**24 pixels (not supported)")
    if w is not None:
        w = jnp.asarray(w)
        if w.shape != sv.shape[:-1]:
            raise ValueError(
                f"w must have shape {tuple(sv.shape[:-1])} (one value per vertex), "
                f"got {tuple(w.shape)}"
            )
    if not jnp.issubdtype(sv.dtype, jnp.floating):
        sv = sv.astype(jnp.float32)
    try:
        tri_np = np.asarray(triangles)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        tri_np = None
    if tri_np is not None and tri_np.size:
        lo, hi = int(tri_np.min()), int(tri_np.max())
        if lo < 0 or hi >= sv.shape[-2]:
            raise ValueError(
                f"triangles index vertices outside [0, {sv.shape[-2]}): min {lo}, max {hi}"
            )
    return sv, tri.astype(jnp.int32), (h, wd), w


def _all3(a: jax.Array) -> jax.Array:
    return a[:, 0] & a[:, 1] & a[:, 2]


def _min3(a: jax.Array) -> jax.Array:
    return jnp.minimum(jnp.minimum(a[:, 0], a[:, 1]), a[:, 2])


def _max3(a: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.maximum(a[:, 0], a[:, 1]), a[:, 2])


def _triangle_table(v: jax.Array, tri: jax.Array, w: jax.Array | None, cull: bool):
    """Per-triangle data for the fragment loop.

    Returns ``(table (F, 12) float32, jmin, imin, nx, count)`` where a table row is
    ``x0 y0 x1 y1 x2 y2 z0 z1 z2 q0 q1 q2`` with ``q = 1/w`` (ones without perspective).
    """
    p = v[tri]  # (F, 3, 3)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    if w is None:
        q = jnp.ones_like(z)
    else:
        wt = w[tri]
        q = 1.0 / jnp.where(wt == 0, 1.0, wt)
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    # explicit elementwise ops: reductions over a length-3 axis are slow on XLA:CPU
    finite = _all3(jnp.isfinite(x)) & _all3(jnp.isfinite(y)) & _all3(jnp.isfinite(z))
    if w is not None:  # (q is a constant without w: no need to check, nor to constant-fold)
        finite = finite & _all3(jnp.isfinite(q))
    ok = finite & (area != 0)
    if cull:
        ok = ok & (area < 0)
    return p, x, y, z, q, area, ok


def _cumsum_int(x: jax.Array, block: int = 64) -> jax.Array:
    """Exact inclusive cumulative sum of a non-negative int32 vector ``(n,)``, each entry below
    ``2**24``, whose total fits int32.

    XLA's CPU ``cumsum`` is slow (a windowed reduction); this does the within-block sums as a
    float32 matmul with a triangular matrix on the 12-bit halves of the entries (every partial
    sum stays below ``2**24``, hence exact) and the short cumulative sum of block totals in int32.
    """
    n = x.shape[0]
    if n == 0:
        return x
    m = -(-n // block)
    xp = jnp.pad(x, (0, m * block - n)).reshape(m, block)
    halves = jnp.concatenate([xp & 4095, xp >> 12], axis=0).astype(jnp.float32)
    tri = jnp.triu(jnp.ones((block, block), jnp.float32))
    c = (halves @ tri).astype(jnp.int32)
    c = c[:m] + (c[m:] << 12)
    tot = c[:, -1]
    off = jnp.cumsum(tot, dtype=jnp.int32) - tot
    return (c + off[:, None]).reshape(-1)[:n]


def _cumsum_small(x: jax.Array, block: int = 128) -> jax.Array:
    """Exact inclusive cumulative sum of a non-negative int32 vector ``(n,)`` whose total is
    below ``2**24`` (every partial sum is then exact in float32): one blocked float32 matmul
    and a short cumulative sum of the block totals."""
    n = x.shape[0]
    if n == 0:
        return x
    m = -(-n // block)
    xp = jnp.pad(x, (0, m * block - n)).reshape(m, block).astype(jnp.float32)
    c = xp @ jnp.triu(jnp.ones((block, block), jnp.float32))
    tot = c[:, -1]
    off = jnp.cumsum(tot) - tot
    return (c + off[:, None]).astype(jnp.int32).reshape(-1)[:n]


def _chunk_tiles(tab: jax.Array, bbox_col: int, chunk: int, tile: int,
                 max_tiles: int | None = None):
    """The chunk -> (triangle, tile pixel) expansion of a tile stream, shared by the rasterisers.

    The stream enumerates, triangle after triangle, the ``tile x tile`` pixel tiles covering each
    triangle's pixel box: triangle ``t`` owns stream entries ``offsets[t] .. offsets[t] +
    count[t] - 1``, and chunk ``k`` is entries ``k*chunk .. (k+1)*chunk - 1`` (those from
    ``total`` on are padding).

    Args:
      tab: (F, C) float32 per-triangle rows; columns ``bbox_col .. bbox_col + 4`` hold
        ``jmin imin jmax imax max(ntx, 1)`` (pixel box and tiles per box row, exact floats).
      bbox_col: static column of ``jmin`` in ``tab``.
      chunk, tile: static chunk length and tile side.
      max_tiles: optional static bound on the tiles of one triangle; below ``2**22`` the
        tile's row and column come from an (exact) float32 division instead of int32 ``//``/``%``.

    Returns:
      ``expand(k, offsets, total) -> (t, row, col, rr, valid)``: for a () int32 chunk index,
      (F,) int32 exclusive offsets and the () int32 stream length, the triangle of each entry
      ``t (chunk,) int32``, its ``tab`` row ``(chunk, C)``, the pixel column and row of each of
      its ``T = tile * tile`` pixels ``col, rr (chunk, T) int32``, and ``valid (chunk, T) bool``
      (entry below ``total`` and pixel inside the triangle's box).
    """
    nf = tab.shape[0]
    # marks sum to at most F: a single float32 matmul is exact below 2**24 triangles
    cumsum = _cumsum_small if nf < 2**24 else _cumsum_int
    # a triangle has at most ceil(H / tile) * ceil(W / tile) tiles (< 2**22: float division)
    float_div = max_tiles is not None and max_tiles < 2**22
    # built once, here (outside the caller's loops): same trace, same compiled code as before
    ty_, tx_ = jnp.meshgrid(jnp.arange(tile, dtype=jnp.int32), jnp.arange(tile, dtype=jnp.int32),
                            indexing="ij")
    ty_, tx_ = ty_.reshape(-1), tx_.reshape(-1)
    c = bbox_col

    def expand(k: jax.Array, offsets: jax.Array, total: jax.Array):
        base = k * chunk
        rel = offsets - base
        inrange = (rel >= 1) & (rel < chunk)
        marks = jnp.zeros((chunk,), jnp.int32).at[jnp.where(inrange, rel, chunk)].add(
            1, mode="drop")
        before = jnp.sum(offsets <= base, dtype=jnp.int32) - 1
        t = jnp.clip(before + cumsum(marks), 0, max(nf - 1, 0))
        f = base + jnp.arange(chunk, dtype=jnp.int32)
        row = tab[t]
        local = f - offsets[t]
        ntxt = row[:, c + 4].astype(jnp.int32)
        if float_div:
            # exact: local < 2**22, so (local + 0.5) / ntxt is within 0.25 / ntxt of its true
            # value, whose distance to the nearest integer is at least 0.5 / ntxt
            qy = jnp.floor((local.astype(jnp.float32) + 0.5) / row[:, c + 4]).astype(jnp.int32)
            qx = local - qy * ntxt
        else:
            qy, qx = local // ntxt, local % ntxt
        col = (row[:, c].astype(jnp.int32) + qx * tile)[:, None] + tx_[None, :]
        rr = (row[:, c + 1].astype(jnp.int32) + qy * tile)[:, None] + ty_[None, :]
        valid = ((f < total)[:, None] & (col <= row[:, c + 2:c + 3].astype(jnp.int32))
                 & (rr <= row[:, c + 3:c + 4].astype(jnp.int32)))
        return t, row, col, rr, valid

    return expand


def _bbox(x, y, ok, h: int, wd: int):
    big = 4.0 * max(h, wd) + 8.0
    xmin = jnp.clip(_min3(x), -big, big)
    xmax = jnp.clip(_max3(x), -big, big)
    ymin = jnp.clip(_min3(y), -big, big)
    ymax = jnp.clip(_max3(y), -big, big)
    jmin = jnp.maximum(jnp.ceil(xmin - 0.5), 0.0)
    jmax = jnp.minimum(jnp.floor(xmax - 0.5), wd - 1.0)
    imin = jnp.maximum(jnp.ceil(ymin - 0.5), 0.0)
    imax = jnp.minimum(jnp.floor(ymax - 0.5), h - 1.0)
    nx = jnp.where(ok, jnp.maximum(jmax - jmin + 1.0, 0.0), 0.0)
    ny = jnp.where(ok, jnp.maximum(imax - imin + 1.0, 0.0), 0.0)
    return jmin, imin, jmax, imax, nx, ny


def _eval_fragments(table: jax.Array, px: jax.Array, py: jax.Array, valid: jax.Array):
    """Inside test and depth of fragments; ``table[..., k]`` broadcast against ``px``/``py``.

    Table columns: ``x0 y0 x1 y1 x2 y2 z0 z1 z2 q0 q1 q2`` with ``q = 1/w``.
    """
    x0, y0, x1, y1, x2, y2 = (table[..., k] for k in range(6))
    z0, z1, z2, q0, q1, q2 = (table[..., k] for k in range(6, 12))
    # edge functions: e0 opposite vertex 0 (edge v1->v2), etc.; their sum is the signed area
    e0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    e1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    e2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    s = jnp.where(area > 0, 1.0, -1.0)
    inside = valid & (e0 * s >= 0) & (e1 * s >= 0) & (e2 * s >= 0)
    a0, a1, a2 = e0 * q0, e1 * q1, e2 * q2
    den = a0 + a1 + a2
    den = jnp.where(inside & (den != 0), den, 1.0)
    depth = (a0 * z0 + a1 * z1 + a2 * z2) / den
    inside = inside & jnp.isfinite(depth)
    return inside, depth


def _cumsum_float(x: jax.Array, block: int = 64) -> jax.Array:
    """Approximate (float32) inclusive cumulative sum via blocked matmuls (see _cumsum_int)."""
    n = x.shape[0]
    if n == 0:
        return x
    m = -(-n // block)
    xp = jnp.pad(x, (0, m * block - n)).reshape(m, block)
    c = xp @ jnp.triu(jnp.ones((block, block), jnp.float32))
    tot = c[:, -1]
    off = (_cumsum_float(tot, block) if m > 1 else tot) - tot
    return (c + off[:, None]).reshape(-1)[:n]


def _depth_keys(depth: jax.Array, t: jax.Array, inside: jax.Array) -> jax.Array:
    """64-bit z-buffer keys: the depth's order-preserving uint32 image in the high word, the
    triangle id in the low word, so that one unsigned ``min`` picks the nearest fragment and,
    among bitwise-equal depths, the smallest triangle id. Fragments that are not ``inside`` get
    the all-ones key (the empty z-buffer value, whose low word reads back as id ``-1``).

    Must be called with 64-bit types enabled. ``depth`` is float32 and finite where ``inside``.
    """
    d = jax.lax.bitcast_convert_type(jnp.where(depth == 0, jnp.float32(0), depth), jnp.int32)
    # negative floats: flip all bits; non-negative: set the sign bit -> unsigned order = float order
    u = jax.lax.bitcast_convert_type(jnp.where(d < 0, ~d, d | jnp.int32(-(2**31))), jnp.uint32)
    key = (u.astype(jnp.uint64) << jnp.uint64(32)) | t.astype(jnp.uint32).astype(jnp.uint64)
    return jnp.where(inside, key, jnp.uint64(2**64 - 1))


def _zbuffer(v, tri, w, h: int, wd: int, chunk: int, tile: int, cull: bool):
    """Non-differentiable visibility: ``(H*W,) int32`` ids (``-1`` on background)."""
    v = jax.lax.stop_gradient(v)
    w = None if w is None else jax.lax.stop_gradient(w)
    npix = h * wd
    p, x, y, z, q, area, ok = _triangle_table(v, tri, w, cull)
    table = jnp.concatenate([jnp.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2]], 1),
                             z, q], axis=1).astype(jnp.float32)
    jmin, imin, jmax, imax, nx, ny = _bbox(x, y, ok, h, wd)
    ntx = jnp.ceil(nx / tile)
    countf = (ntx * jnp.ceil(ny / tile)).astype(jnp.float32)
    # Epochs keep int32 offset arithmetic exact whatever the total: triangles are grouped into
    # consecutive runs of about _EPOCH tiles (one epoch in any ordinary case).
    epoch_of = jnp.floor((_cumsum_float(countf) - countf) / _EPOCH).astype(jnp.int32)
    epoch_of = jnp.where(countf > 0, epoch_of, -1)
    n_epochs = jnp.max(epoch_of, initial=-1) + 1
    # ints below 2**24 are exact in float32: one gather fetches everything a tile needs
    tab = jnp.concatenate(
        [table, jnp.stack([jmin, imin, jmax, imax, jnp.maximum(ntx, 1.0)], 1).astype(jnp.float32)],
        axis=1)
    max_tiles = -(-h // tile) * -(-wd // tile)  # of one triangle
    expand = _chunk_tiles(tab, 12, chunk, tile, max_tiles)
    # statically a single epoch when even F full-image triangles keep int32 offsets exact
    one_epoch = tri.shape[0] * max_tiles + chunk <= min(2**31 - 1, 4 * _EPOCH)

    def epoch_stream(e):
        if one_epoch:
            count = countf.astype(jnp.int32)
        else:
            count = jnp.where(epoch_of == e, countf, 0.0).astype(jnp.int32)
        offsets = _cumsum_int(count) - count  # exclusive
        total = jnp.sum(count, dtype=jnp.int32)
        return offsets, total

    def chunk_update(k, offsets, total, zbuf):
        t, row, col, rr, valid = expand(k, offsets, total)
        px = col.astype(jnp.float32) + 0.5
        py = rr.astype(jnp.float32) + 0.5
        inside, depth = _eval_fragments(row[:, None, :12], px, py, valid)
        pix = jnp.where(inside, rr * wd + col, npix).reshape(-1)
        with jax.enable_x64(True):
            key = _depth_keys(depth, jnp.broadcast_to(t[:, None], inside.shape), inside)
            return zbuf.at[pix].min(key.reshape(-1), mode="drop")

    def epoch_body(c):
        e, zb = c
        offsets, total = epoch_stream(e)
        n_chunks = (total + chunk - 1) // chunk

        def chunk_body(cc):
            k, zb2 = cc
            return k + 1, chunk_update(k, offsets, total, zb2)

        zb = jax.lax.while_loop(lambda cc: cc[0] < n_chunks, chunk_body, (jnp.int32(0), zb))[1]
        return e + 1, zb

    with jax.enable_x64(True):
        zbuf = jnp.full((npix,), 2**64 - 1, jnp.uint64)
    if one_epoch:
        zbuf = epoch_body((jnp.int32(0), zbuf))[1]
    else:
        zbuf = jax.lax.while_loop(lambda c: c[0] < n_epochs, epoch_body, (jnp.int32(0), zbuf))[1]
    with jax.enable_x64(True):
        low = (zbuf & jnp.uint64(0xFFFFFFFF)).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(low, jnp.int32)


def _pixel_bary(rows: jax.Array, covered: jax.Array, perspective: bool):
    """Barycentrics of the pixel centres in per-pixel triangle rows (struct-of-arrays math).

    ``rows`` is ``(C, H, W)`` (planes): ``x0 y0 z0 x1 y1 z1 x2 y2 z2`` (``C = 9``) and, with
    ``perspective``, ``w0 w1 w2`` (``C = 12``). Returns
    ``(px, py, cols, wk, a, den_safe, good, b)`` (lists of ``(H, W)`` planes where plural).
    """
    h, wd = covered.shape
    cols = [rows[k] for k in range(rows.shape[0])]
    x0, y0, _, x1, y1, _, x2, y2, _ = cols[:9]
    py, px = jnp.meshgrid(jnp.arange(h, dtype=rows.dtype) + 0.5,
                          jnp.arange(wd, dtype=rows.dtype) + 0.5, indexing="ij")
    e = [(x2 - x1) * (py - y1) - (y2 - y1) * (px - x1),
         (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2),
         (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)]
    if perspective:
        wk = [jnp.where(covered & (c != 0), c, 1.0) for c in cols[9:12]]
        a = [e[k] / wk[k] for k in range(3)]
    else:
        wk, a = None, e
    den = a[0] + a[1] + a[2]
    good = covered & (den != 0)
    den_safe = jnp.where(good, den, 1.0)
    b = [jnp.where(good, a[k] / den_safe, 0.0) for k in range(3)]
    return px, py, cols, wk, a, den_safe, good, b


def _gather_planes(table: jax.Array, tid: jax.Array, covered: jax.Array) -> jax.Array:
    """``(C, H, W)`` planes of the rows ``table (F, C)`` of the pixels' triangles (zeros on
    background): one row gather (cheapest on CPU), viewed as planes."""
    idx = jnp.where(covered, tid, table.shape[0])
    return jnp.moveaxis(jnp.take(table, idx, axis=0, mode="fill", fill_value=0), -1, 0)


def _bary_depth_fwd_math(rows, covered, perspective):
    _, _, cols, _, _, _, _, b = _pixel_bary(rows, covered, perspective)
    depth = jnp.where(covered, b[0] * cols[2] + b[1] * cols[5] + b[2] * cols[8], jnp.inf)
    return jnp.stack(b, axis=-1), depth


def _bary_depth(table: jax.Array, tid: jax.Array, covered: jax.Array, perspective: bool):
    """``(barycentric (H, W, 3), depth (H, W))`` from per-triangle rows ``table (F, C)``.

    Plain autodiff (forward and reverse mode). Written plane by plane, with no broadcast or
    reduction over a length-3 axis and a gather whose out-of-range background rows are zeros
    forward and dropped in the backward scatter: on XLA:CPU that is faster, forward and
    backward, than the equivalent ``(H, W, 3)`` array code.
    """
    return _bary_depth_fwd_math(_gather_planes(table, tid, covered), covered, perspective)


def barycentric_from_ids(
    screen_vertices: jax.Array,
    triangles: jax.Array,
    triangle_id: jax.Array,
    w: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Differentiable barycentrics and depth of pixel centres in given triangles.

    Args:
      screen_vertices: ``(V, 3)`` pixel x, y and depth z.
      triangles: ``(F, 3)`` int.
      triangle_id: ``(H, W)`` int32, ``-1`` for background.
      w: optional ``(V,)`` per-vertex clip-space w (e.g. camera-space z) for perspective
        correction.

    Returns:
      ``barycentric (H, W, 3)`` (zeros on background) and ``depth (H, W)`` (``+inf`` on
      background). Gradients flow to ``screen_vertices`` and ``w``; they are finite everywhere.
    """
    covered = triangle_id >= 0
    nf = triangles.shape[0]
    # one row gather per pixel from a per-triangle table (cheaper forward and backward)
    cols = [screen_vertices[triangles].reshape(nf, 9)]
    if w is not None:
        cols.append(w[triangles].astype(screen_vertices.dtype))
    table = jnp.concatenate(cols, axis=1) if len(cols) > 1 else cols[0]
    return _bary_depth(table, triangle_id, covered, w is not None)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _rasterize_single(sv, tri, w, h, wd, chunk, tile, cull):
    tid = _zbuffer(sv, tri, w, h, wd, chunk, tile, cull).reshape(h, wd)
    bary, depth = barycentric_from_ids(sv, tri, tid, w)
    return Fragments(triangle_id=tid, barycentric=bary, depth=depth)


def default_fragment_chunk(image_size: tuple[int, int], tile: int = 2) -> int:
    """Default static chunk length (in tiles) of the fragment loop:
    ``max(3 * H * W / tile**2, 4096)`` (room for ~3x overdraw of bounding-box tiles; more
    tiles are processed in further chunks, never dropped)."""
    return max(3 * int(image_size[0]) * int(image_size[1]) // (tile * tile), 4096)


def rasterize(
    screen_vertices: jax.Array,
    triangles: jax.Array,
    image_size: tuple[int, int],
    w: jax.Array | None = None,
    *,
    cull_backfaces: bool = False,
    fragment_chunk: int | None = None,
    tile: int = 2,
) -> Fragments:
    """Rasterise triangles with a z-buffer (nearest = smallest depth wins).

    Args:
      screen_vertices: ``(V, 3)`` or batched ``(B, V, 3)``: x, y in pixels (pixel centres at
        ``i + 0.5``, x right, y down) and depth z (smaller is nearer).
      triangles: ``(F, 3)`` int vertex indices, shared across the batch. Any count (ids are
        int32); zero-area, non-finite and off-screen triangles are ignored.
      image_size: ``(H, W)`` (static).
      w: optional ``(V,)`` / ``(B, V)`` clip-space w per vertex (e.g. camera-space z) to make
        the barycentrics and depth perspective-correct: ``b_i ∝ e_i / w_i``.
      cull_backfaces: if True, drop triangles that appear clockwise on screen as viewed (x right,
        y down), i.e. keep triangles whose signed area
        ``(x1-x0)(y2-y0) - (x2-x0)(y1-y0)`` is negative (counter-clockwise as seen on screen).
      fragment_chunk: static number of ``tile x tile`` pixel tiles per chunk of the fragment
        loop (performance only; default :func:`default_fragment_chunk`).
      tile: static side of the pixel tiles a triangle's bounding box is cut into (performance
        only; 2 suits triangles of a few pixels, larger values suit larger triangles).

    Returns:
      :class:`Fragments` with ``(…, H, W)`` fields. Ties in depth go to the smallest triangle id.
      ``triangle_id`` is not differentiable; ``barycentric``/``depth`` are, w.r.t.
      ``screen_vertices`` and ``w``.
    """
    sv, tri, (h, wd), w = _check_inputs(screen_vertices, triangles, image_size, w)
    tile = int(tile)
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    chunk = (int(fragment_chunk) if fragment_chunk is not None
             else default_fragment_chunk((h, wd), tile))
    if chunk <= 0:
        raise ValueError(f"fragment_chunk must be positive, got {chunk}")
    if sv.ndim == 3:
        return _rasterize_batched(sv, tri, w, h, wd, chunk, tile, bool(cull_backfaces))
    return _rasterize_single(sv, tri, w, h, wd, chunk, tile, bool(cull_backfaces))


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _rasterize_batched(sv, tri, w, h, wd, chunk, tile, cull):
    # one image after the other (lax.map): on CPU the batched (vmapped) scatters and gathers
    # cost about twice as much per image as the unbatched ones
    if w is None:
        return jax.lax.map(lambda s: _rasterize_single(s, tri, None, h, wd, chunk, tile, cull), sv)
    return jax.lax.map(lambda a: _rasterize_single(a[0], tri, a[1], h, wd, chunk, tile, cull),
                       (sv, w))
