"""Hard (z-buffer) rasterisation in pure JAX.

Conventions (project-wide): screen vertices are ``(V, 3)`` with ``x`` right and ``y`` down in
pixels (OpenCV; pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, its centre is ``(j+0.5, i+0.5)``)
and ``z`` a depth where smaller is nearer. ``image_size`` is ``(H, W)``.

Algorithm (exact, no fixed capacity that can drop anything):

1. Per triangle (computed on struct-of-arrays ``(F,)`` vectors), the ``nx_t * ny_t`` pixel
   *centres* of the clipped bounding box it can cover are taken in row-major order and cut into
   runs of ``T = tile * tile`` consecutive pixels, ``n_t = ceil(nx_t * ny_t / T)`` of them (a run
   may wrap onto the box's next rows; unlike square tiles, only a triangle's last run is ever
   partly empty: 13-17 % fewer entries than ``tile x tile`` tiles on the ICT meshes). An
   exclusive cumulative sum lays all (triangle, run) pairs out on one line of length ``N = sum
   n_t``; one float32 table row per triangle holds everything a run needs (vertices, ``1/w``,
   box), fetched by one gather.
2. The line is processed in static-size chunks of ``fragment_chunk`` runs inside a
   ``lax.while_loop`` that runs until all ``N`` entries are done, so every fragment (box pixel)
   is visited whatever the triangle sizes are. A chunk costs its full static length however few
   entries are left in it, so for long chunks (``>= 2**14`` runs) the last entries go through a
   second loop of tail chunks, ``max(chunk / 8, F / 4)`` runs long (each chunk also makes one
   pass over the triangles): full chunks run while they would leave less than a tail unused.
   Each chunk entry finds its triangle (a scatter of the triangles' start marks and a cumulative
   sum); each of its pixels, its row and column in the box (an exact float32 division by the
   box width); the pixel centres are computed in float32 (exact: integers and halves below
   ``2**24``). For each fragment: the
   inside test (edge functions evaluated relative to a vertex, inclusive on edges so that shared
   edges leave no holes), the interpolated depth, and a ``scatter-min`` of a 64-bit key into the
   z-buffer: the float32 depth's order-preserving bits in the high word, the int32 triangle id in
   the low word. One pass thus picks the nearest fragment and, among bitwise-equal depths, the
   smallest triangle id, deterministically (integer ``min`` is order-independent, and each
   fragment's depth is computed once, by the same float32 expression whatever the run and chunk
   sizes); there is no limit on the number of triangles and no depth quantisation. (The keys use
   64-bit types locally, through ``jax.enable_x64``; everything else stays 32-bit.) The default
   chunk (:func:`default_fragment_chunk`) is capped for large images: on CPU, large loop
   temporaries cost more (page faults) than extra chunks.
3. So that the int32 offsets stay exact whatever ``N`` is, triangles are grouped into
   consecutive "epochs" of about ``2**29`` runs (an outer ``while_loop``; one epoch for any
   ordinary mesh, and no epoch bookkeeping when the sizes make one epoch certain).

Only the winning triangle's barycentrics are then computed per pixel (:func:`barycentric_from_ids`),
from one gathered row of its vertices per pixel.

``triangle_id`` is not differentiable: the z-buffer sees ``stop_gradient`` inputs, so neither
autodiff mode ever re-runs or differentiates it. ``barycentric`` and ``depth`` are recomputed from
the winning triangle's vertices with differentiable arithmetic, so gradients flow to
``screen_vertices`` (and ``w``) through interpolation; background and degenerate cases are guarded
with the double-``where`` trick so that gradients are never NaN. Their derivative is a
hand-written JVP (a ``custom_jvp``, so forward and reverse mode both work) whose transpose is a
few per-pixel expressions and one scatter-add per row entry: plain autodiff of the same code
compiles, on XLA:CPU, into a fusion that re-evaluates the whole cotangent graph per row entry.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from jaxface._pytree import pytree_dataclass

__all__ = ["Fragments", "rasterize", "barycentric_from_ids"]

# Stream entries per epoch (int32 offsets stay exact: an epoch holds < _EPOCH + 2**24 entries).
_EPOCH = float(2**29)
# Below this many tiles (or pixels) per triangle box (at most), a tile's (pixel's) place in its
# box comes from an exact float32 division rather than int32 ``//`` and ``%``.
_FLOAT_DIV_TILES = 2**22
# The fragment loop's last chunks are 1/_TAIL_DIVISOR of the chunk size (see _zbuffer).
_TAIL_DIVISOR = 8
# No tail chunks for chunks shorter than this (a second loop would cost more compile time).
_TAIL_MIN_CHUNK = 2**14


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


def _cumsum(x: jax.Array, rows: int = 16) -> jax.Array:
    """Inclusive cumulative sum of a non-negative vector ``(n,)`` (counts): exact for integers
    whose total fits the dtype, float32 rounding of a blocked sum for floats.

    XLA:CPU's ``cumsum`` (a windowed reduction) and a blocked matmul with a triangular matrix
    both cost O(``n * block``); this sums runs of ``rows`` consecutive entries by ``rows - 1``
    vector additions and offsets each run by the cumulative sum of the run totals, recursively.
    ``x`` is first computed into memory (:func:`_materialise`): otherwise XLA:CPU fuses the
    computation of ``x`` into every one of those additions. About 2x faster than the blocked
    matmul on the face's per-triangle tile counts.
    """
    n = x.shape[0]
    if n == 0:
        return x
    x = _materialise(x, x[0] >= 0)
    return _cumsum_runs(x, rows)


def _exclusive_offsets(count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Stream layout of non-negative int32 counts ``(n,)`` whose total fits int32: entry ``t``
    owns stream entries ``offsets[t] .. offsets[t] + count[t] - 1``.

    Returns ``(offsets (n,) int32, total () int32)``, both from the inclusive sums (``count``
    is not read again)."""
    if count.shape[0] == 0:
        return count, jnp.zeros((), count.dtype)
    incl = _cumsum(count)
    return jnp.concatenate([jnp.zeros((1,), incl.dtype), incl[:-1]]), incl[-1]


def _cumsum_runs(x: jax.Array, rows: int) -> jax.Array:
    n = x.shape[0]
    if n <= 2 * rows:
        return jnp.cumsum(x, dtype=x.dtype)
    m = -(-n // rows)
    xp = jnp.pad(x, (0, m * rows - n)).reshape(m, rows)
    run = [xp[:, 0]]
    for j in range(1, rows):
        run.append(run[-1] + xp[:, j])
    tot = run[-1]
    off = _cumsum_runs(tot, rows) - tot
    return (jnp.stack(run, axis=1) + off[:, None]).reshape(-1)[:n]


def _materialise(x: Any, pred: jax.Array) -> Any:
    """``x`` (an array or pytree) computed once into memory, where ``pred`` (a runtime ``()``
    bool) is true; zeros where it is false (callers pass a predicate that is true, or one for
    which zeros are the value of ``x``).

    ``x`` passes through a conditional, which XLA cannot fuse across. XLA:CPU otherwise fuses
    a producer into each of its consumers (recomputing it for each) and drops
    ``optimization_barrier``.
    """
    return jax.lax.cond(pred, lambda y: y, lambda y: jax.tree.map(jnp.zeros_like, y), x)


def _chunk_owners(base: jax.Array, offsets: jax.Array, chunk: int, nf: int):
    """Owners of the entries ``base .. base + chunk - 1`` of a stream in which triangle ``t``
    owns entries ``offsets[t] .. offsets[t+1] - 1`` (``offsets (F,) int32`` exclusive,
    non-decreasing; ``base`` a () int32).

    Returns ``(t, f, local)``, each ``(chunk,) int32``: the owning triangle (clipped into
    ``[0, F)``; meaningless past the stream's end), the stream index and its rank within the
    triangle's entries.
    """
    rel = offsets - base
    inrange = (rel >= 1) & (rel < chunk)
    marks = jnp.zeros((chunk,), jnp.int32).at[jnp.where(inrange, rel, chunk)].add(
        1, mode="drop")
    before = jnp.sum(offsets <= base, dtype=jnp.int32) - 1
    t = jnp.clip(before + _cumsum(marks), 0, max(nf - 1, 0))
    f = base + jnp.arange(chunk, dtype=jnp.int32)
    return t, f, f - offsets[t]


def _tile_in_box(local: jax.Array, ntx: jax.Array, float_div: bool) -> tuple[jax.Array, jax.Array]:
    """Row and column ``(qy, qx)`` of item (tile or pixel) number ``local`` (int32) in a
    row-major box ``ntx`` items wide, both float32 (exact integers), broadcasting ``local``
    against ``ntx`` (float32, >= 1).

    With ``float_div`` (``local < 2**22``) from a float32 division, exact: ``(local + 0.5) /
    ntx`` is within ``0.25 / ntx`` of its true value, whose distance to the nearest integer is
    at least ``0.5 / ntx``; otherwise from int32 ``//`` and ``%``.
    """
    if float_div:
        lf = local.astype(jnp.float32)
        qy = jnp.floor((lf + 0.5) / ntx)
        return qy, lf - qy * ntx
    ni = ntx.astype(jnp.int32)
    return (local // ni).astype(jnp.float32), (local % ni).astype(jnp.float32)


def _chunk_tiles(tab: jax.Array, bbox_col: int, chunk: int, tile: int,
                 max_tiles: int | None = None):
    """The chunk -> (triangle, tile pixel) expansion of a tile stream (the soft rasteriser's).

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
      its ``T = tile * tile`` pixels ``col, rr (chunk, T) float32`` (exact integers), and
      ``valid (chunk, T) bool`` (entry below ``total`` and pixel inside the triangle's box).
    """
    nf = tab.shape[0]
    # a triangle has at most ceil(H / tile) * ceil(W / tile) tiles (< 2**22: float division)
    float_div = max_tiles is not None and max_tiles < _FLOAT_DIV_TILES
    # NumPy, so that they are literal constants inside the caller's loops
    ty_, tx_ = np.meshgrid(np.arange(tile, dtype=np.float32),
                           np.arange(tile, dtype=np.float32), indexing="ij")
    ty_, tx_ = ty_.reshape(-1), tx_.reshape(-1)
    c = bbox_col

    def expand(k: jax.Array, offsets: jax.Array, total: jax.Array):
        t, f, local = _chunk_owners(k * chunk, offsets, chunk, nf)
        row = tab[t]
        qy, qx = _tile_in_box(local, row[:, c + 4], float_div)
        # float32 pixel positions (exact integers below 2**24; XLA:CPU vectorises float
        # arithmetic better than int32 here)
        col = (row[:, c] + qx * tile)[:, None] + tx_[None, :]
        rr = (row[:, c + 1] + qy * tile)[:, None] + ty_[None, :]
        valid = ((f < total)[:, None] & (col <= row[:, c + 2:c + 3])
                 & (rr <= row[:, c + 3:c + 4]))
        return t, row, col, rr, valid

    return expand


def _centre_span(lo: jax.Array, hi: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """First and last index ``i`` in ``[0, n)`` whose pixel-centre line ``i + 0.5`` lies in
    ``[lo, hi]``, as floats (``last < first`` when there is none)."""
    return jnp.maximum(jnp.ceil(lo - 0.5), 0.0), jnp.minimum(jnp.floor(hi - 0.5), n - 1.0)


def _bbox(x, y, ok, h: int, wd: int):
    """Clipped pixel-centre box of triangles given as ``(3, F)`` corner coordinates."""
    big = 4.0 * max(h, wd) + 8.0
    xmin = jnp.clip(jnp.minimum(jnp.minimum(x[0], x[1]), x[2]), -big, big)
    xmax = jnp.clip(jnp.maximum(jnp.maximum(x[0], x[1]), x[2]), -big, big)
    ymin = jnp.clip(jnp.minimum(jnp.minimum(y[0], y[1]), y[2]), -big, big)
    ymax = jnp.clip(jnp.maximum(jnp.maximum(y[0], y[1]), y[2]), -big, big)
    jmin, jmax = _centre_span(xmin, xmax, wd)
    imin, imax = _centre_span(ymin, ymax, h)
    nx = jnp.where(ok, jnp.maximum(jmax - jmin + 1.0, 0.0), 0.0)
    ny = jnp.where(ok, jnp.maximum(imax - imin + 1.0, 0.0), 0.0)
    return jmin, imin, jmax, imax, nx, ny


def _eval_fragments(cols: list, px: jax.Array, py: jax.Array, valid: jax.Array):
    """Inside test and depth of fragments; the 12 columns broadcast against ``px``/``py``.

    Columns: ``x0 y0 x1 y1 x2 y2 z0 z1 z2 q0 q1 q2`` with ``q = 1/w``.
    """
    x0, y0, x1, y1, x2, y2, z0, z1, z2, q0, q1, q2 = cols
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


def _scatter_min(buf: jax.Array, idx: jax.Array, val: jax.Array) -> jax.Array:
    """``buf.at[idx].min(val)`` for ``idx (n,) int32`` in ``[0, len(buf)]``, out-of-range entries
    dropped: a bare XLA scatter, with no negative-index wrapping pass over the indices."""
    dn = jax.lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                         scatter_dims_to_operand_dims=(0,))
    return jax.lax.scatter_min(buf, idx[:, None], val, dn, indices_are_sorted=False,
                               unique_indices=False, mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


def _zbuffer(v, tri, w, h: int, wd: int, chunk: int, tile: int, cull: bool):
    """Non-differentiable visibility: ``(H*W,) int32`` ids (``-1`` on background)."""
    v = jax.lax.stop_gradient(v)
    w = None if w is None else jax.lax.stop_gradient(w)
    npix = h * wd
    nf = tri.shape[0]
    if nf == 0:
        return jnp.full((npix,), -1, jnp.int32)
    # struct of arrays (coordinate, corner, F): every per-triangle quantity below is computed
    # on contiguous (F,) vectors
    vt = v.T
    x, y, z = ([vt[c][tri[:, k]] for k in range(3)] for c in range(3))
    if w is None:
        q = None
    else:
        wt = w[tri].T
        q = 1.0 / jnp.where(wt == 0, 1.0, wt)
    area = (x[1] - x[0]) * (y[2] - y[0]) - (x[2] - x[0]) * (y[1] - y[0])
    finite = jnp.isfinite(x[0]) & jnp.isfinite(x[1]) & jnp.isfinite(x[2])
    finite = finite & jnp.isfinite(y[0]) & jnp.isfinite(y[1]) & jnp.isfinite(y[2])
    finite = finite & jnp.isfinite(z[0]) & jnp.isfinite(z[1]) & jnp.isfinite(z[2])
    if q is not None:
        finite = finite & jnp.isfinite(q[0]) & jnp.isfinite(q[1]) & jnp.isfinite(q[2])
    ok = finite & (area != 0)
    if cull:
        ok = ok & (area < 0)
    jmin, imin, _, imax, nx, ny = _bbox(x, y, ok, h, wd)
    run = tile * tile
    # runs of `run` box pixels per triangle (nx * ny < 2**24 is exact, and so is the ceil of a
    # correctly rounded division)
    countf = jnp.ceil(nx * ny / run).astype(jnp.float32)
    # Epochs keep int32 offset arithmetic exact whatever the total: triangles are grouped into
    # consecutive groups of about _EPOCH entries (one epoch in any ordinary case).
    epoch_of = jnp.floor((_cumsum(countf) - countf) / _EPOCH).astype(jnp.int32)
    epoch_of = jnp.where(countf > 0, epoch_of, -1)
    n_epochs = jnp.max(epoch_of, initial=-1) + 1
    # one row per triangle, ints below 2**24 exact in float32: one gather fetches everything
    # a run needs (x0 y0 x1 y1 x2 y2 z0 z1 z2 [q0 q1 q2] jmin imin imax max(nx, 1); a run's
    # column comes from its pixel number, so the box's last column is not needed)
    cols = [x[0], y[0], x[1], y[1], x[2], y[2], z[0], z[1], z[2]]
    if q is not None:
        cols += [q[0], q[1], q[2]]
    nc = len(cols)
    cols += [jmin, imin, imax, jnp.maximum(nx, 1.0)]
    tab = jnp.stack([c.astype(jnp.float32) for c in cols], axis=1)
    one = jnp.ones((), jnp.float32)
    max_runs = -(-h * wd // run)  # of one triangle
    # a box pixel's number within its box is below h * wd
    float_div = h * wd < _FLOAT_DIV_TILES
    # the run's pixel numbers: NumPy, so that they are literal constants in the loop body
    run_ = np.arange(run, dtype=np.int32).reshape(1, -1)
    # statically a single epoch when even F full-image triangles keep int32 offsets exact
    one_epoch = nf * max_runs + chunk <= min(2**31 - 1, 4 * _EPOCH)
    # the loop's last chunks are shorter (tail): 1/8 of a chunk, but never below F/4 entries, as
    # each chunk also makes a pass over the F triangles (the owners' search); none for short
    # chunks, where a second loop costs more compile time than it saves
    tail = max(chunk // _TAIL_DIVISOR, nf // 4, 1)
    if chunk < _TAIL_MIN_CHUNK or 2 * tail > chunk:
        tail = chunk

    def epoch_stream(e):
        if one_epoch:
            count = countf.astype(jnp.int32)
        else:
            count = jnp.where(epoch_of == e, countf, 0.0).astype(jnp.int32)
        return _exclusive_offsets(count)

    def chunk_update(base, size, offsets, total, zbuf):
        t, f, local = _chunk_owners(base, offsets, size, nf)
        row = tab[t]
        rc = [row[:, c:c + 1] for c in range(tab.shape[1])]
        jminr, iminr, imaxr, nxr = rc[nc:]
        # (chunk, run) box pixels: row and column of pixel number local * run + j in the box
        qy, qx = _tile_in_box(local[:, None] * run + run_, nxr, float_div)
        # pixel centres, in float32 (exact: integers and halves below 2**24); float rather than
        # int32 position arithmetic (which XLA:CPU vectorises poorly here)
        cx, cy = jminr + qx, iminr + qy
        px, py = cx + 0.5, cy + 0.5
        # valid: an entry of the stream, and a pixel of the triangle's box (so in the image):
        # a pixel number past the box's last one has a row past its last row
        valid = (f < total)[:, None] & (cy <= imaxr)
        if q is None:
            rc[nc:nc] = [one, one, one]
        inside, depth = _eval_fragments(rc[:12], px, py, valid)
        pix = jnp.where(inside, (cy * wd + cx).astype(jnp.int32), npix)
        with jax.enable_x64(True):
            key = _depth_keys(depth, jnp.broadcast_to(t[:, None], inside.shape), inside)
            return _scatter_min(zbuf, pix.reshape(-1), key.reshape(-1))

    def epoch_body(c):
        e, zb = c
        offsets, total = epoch_stream(e)

        def chunks(size, more, state):
            def body(cc):
                base, zb2 = cc
                return base + size, chunk_update(base, size, offsets, total, zb2)

            return jax.lax.while_loop(lambda cc: more(cc[0]), body, state)

        # full chunks while the chunk would leave less than a tail unused, then tail chunks for
        # the rest (tail == chunk: one loop): the work done past the stream's end is below one
        # tail, not one chunk
        state = (jnp.int32(0), zb)
        if tail < chunk:
            state = chunks(chunk, lambda base: total - base >= chunk - tail, state)
        state = chunks(tail, lambda base: base < total, state)
        return e + 1, state[1]

    with jax.enable_x64(True):
        zbuf = jnp.full((npix,), 2**64 - 1, jnp.uint64)
    if one_epoch:
        zbuf = epoch_body((jnp.int32(0), zbuf))[1]
    else:
        zbuf = jax.lax.while_loop(lambda c: c[0] < n_epochs, epoch_body, (jnp.int32(0), zbuf))[1]
    with jax.enable_x64(True):
        low = (zbuf & jnp.uint64(0xFFFFFFFF)).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(low, jnp.int32)


def _pixel_bary(cols: list, covered: jax.Array, perspective: bool):
    """Barycentrics of the pixel centres in per-pixel triangle rows (struct-of-arrays math).

    ``cols`` are ``(H, W)`` planes ``x0 y0 z0 x1 y1 z1 x2 y2 z2`` and, with ``perspective``,
    ``w0 w1 w2``. Returns ``(px, py, wk, a, den_safe, good, b)`` (lists of ``(H, W)`` planes
    where plural).
    """
    h, wd = covered.shape
    x0, y0, _, x1, y1, _, x2, y2, _ = cols[:9]
    py, px = jnp.meshgrid(jnp.arange(h, dtype=x0.dtype) + 0.5,
                          jnp.arange(wd, dtype=x0.dtype) + 0.5, indexing="ij")
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
    return px, py, wk, a, den_safe, good, b


def _gather_planes(table: jax.Array, tid: jax.Array, covered: jax.Array) -> list:
    """``C`` planes ``(H, W)`` of the rows ``table (F, C)`` of the pixels' triangles (zeros on
    background): one row gather (cheapest on CPU), unstacked along its last axis (whose
    transpose is a single stack, not a sum of ``C`` padded planes)."""
    if table.shape[0] == 0:  # no triangles: every pixel is background
        return [jnp.zeros(tid.shape, table.dtype)] * table.shape[1]
    idx = jnp.where(covered, tid, table.shape[0])
    return list(jnp.unstack(jnp.take(table, idx, axis=0, mode="fill", fill_value=0), axis=-1))


def _take_cols(cols: list, idx: jax.Array) -> list:
    """Per-pixel values ``(H, W)`` of per-triangle columns ``(F,)`` at ``idx`` (``F`` for
    background: zeros forward, dropped in the transposed scatter)."""
    return [jnp.take(c, idx, mode="fill", fill_value=0) for c in cols]


def _take_paired(a: jax.Array, b: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two real columns gathered as one complex column (one gather, one scatter transposed)."""
    if a.dtype not in (jnp.float32, jnp.float64):
        return tuple(_take_cols([a, b], idx))
    ab = jnp.take(jax.lax.complex(a, b), idx, mode="fill", fill_value=0)
    return jnp.real(ab), jnp.imag(ab)


def _gather_columns(table: jax.Array, tid: jax.Array, covered: jax.Array) -> list:
    """The planes of :func:`_gather_planes`, each gathered from its own column of ``table``
    (used under differentiation): transposed, these are ``C`` scalar scatter-adds straight
    from the cotangent planes, where the row gather's transpose stacks them into an
    ``(H*W, C)`` array first and scatters rows of 9 (slow on XLA:CPU). Same values and
    gradients bit for bit; forward + backward of the face at 512² about 2x faster."""
    if table.shape[0] == 0:
        return [jnp.zeros(tid.shape, table.dtype)] * table.shape[1]
    idx = jnp.where(covered, tid, table.shape[0])
    return _take_cols([table[:, c] for c in range(table.shape[1])], idx)


def _gather_columns_paired(table: jax.Array, tid: jax.Array, covered: jax.Array,
                           pairs: list[tuple[int, int]] | None = None) -> list:
    """The planes of :func:`_gather_columns`, two columns at a time: each pair of columns is
    fetched as one complex64 column (whose transpose is one complex scatter-add, both
    cotangent planes in one pass). On XLA:CPU a gather or scatter costs about the same per
    index whether it moves 4 or 8 bytes; same values and gradients bit for bit.

    Args:
      pairs: the column pairs (default: consecutive columns 0-1, 2-3, ...); columns in no pair
        are gathered alone. Only float32 tables are paired (others as :func:`_gather_columns`).
    """
    nc = table.shape[1]
    if table.shape[0] == 0 or table.dtype != jnp.float32:
        return _gather_columns(table, tid, covered)
    if pairs is None:
        pairs = [(c, c + 1) for c in range(0, nc - 1, 2)]
    idx = jnp.where(covered, tid, table.shape[0])
    out: list = [None] * nc
    for a, b in pairs:
        out[a], out[b] = _take_paired(table[:, a], table[:, b], idx)
    for c in range(nc):
        if out[c] is None:
            (out[c],) = _take_cols([table[:, c]], idx)
    return out


def _bary_depth_fwd_math(cols: list, covered: jax.Array, perspective: bool):
    b = _pixel_bary(cols, covered, perspective)[-1]
    depth = jnp.where(covered, b[0] * cols[2] + b[1] * cols[5] + b[2] * cols[8], jnp.inf)
    return b, depth


def _corner_columns(sv: jax.Array, tri: jax.Array, w: jax.Array | None) -> tuple:
    """Per-triangle corner columns ``(F,)`` for :func:`_bary_depth`: ``xy0 xy1 xy2`` (each
    corner's ``x + i y`` as one complex column), ``z0 z1 z2`` and, with ``w``, ``w0 w1 w2``.

    Gathered column by column, so that their transposes (the vertex gradient) are scalar
    scatter-adds into ``(V,)`` (complex for the ``xy`` pairs), not a scatter of rows of 3
    from an ``(F, 9)`` table assembled first."""
    xy = jax.lax.complex(sv[:, 0], sv[:, 1])
    z = sv[:, 2]
    cols = [xy[tri[:, k]] for k in range(3)] + [z[tri[:, k]] for k in range(3)]
    if w is not None:
        w = w.astype(sv.dtype)
        cols += [w[tri[:, k]] for k in range(3)]
    return tuple(cols)


def _row_table(cols: tuple) -> jax.Array:
    """The real ``(F, 9 | 12)`` table ``x0 y0 z0 x1 y1 z1 x2 y2 z2 [w0 w1 w2]`` of corner
    columns (:func:`_corner_columns`)."""
    rows = []
    for k in range(3):
        rows += [jnp.real(cols[k]), jnp.imag(cols[k]), cols[3 + k]]
    return jnp.stack(rows + list(cols[6:]), axis=1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _bary_depth(cols: tuple, tid: jax.Array, covered: jax.Array, perspective: bool):
    """``(barycentric (H, W, 3), depth (H, W))`` from per-triangle corner columns ``cols``
    (:func:`_corner_columns`).

    Written plane by plane, with no broadcast or reduction over a length-3 axis and gathers
    whose out-of-range background entries are zeros forward and dropped in the backward
    scatter. The plain forward gathers one row of the real table per pixel (cheapest on CPU).
    Differentiable in forward and reverse mode through a hand-written JVP
    (:func:`_bary_depth_jvp`): plain autodiff of the plane code transposes into one XLA:CPU
    fusion that recomputes the whole cotangent graph for each of the row entries.
    """
    table = _row_table(cols)
    b, depth = _bary_depth_fwd_math(_gather_planes(table, tid, covered), covered, perspective)
    return jnp.stack(b, axis=-1), depth


@_bary_depth.defjvp
def _bary_depth_jvp(perspective: bool, primals: tuple, tangents: tuple):
    """JVP of :func:`_bary_depth` (linear in the column tangents; JAX transposes it for VJPs).

    With ``e_k`` the edge functions, ``a_k = e_k / w_k`` (``a = e`` without perspective),
    ``A = a_0 + a_1 + a_2`` and ``b_k = a_k / A``: ``db_k = (da_k - b_k dA) / A``,
    ``da_k = (de_k - a_k dw_k) / w_k`` and ``d depth = sum_k (db_k z_k + b_k dz_k)``, all masked
    like the forward (no gradient through background or degenerate pixels). ``de_k`` is written
    as a combination of the vertex tangents with coefficients that are differences of the
    pixel's rows and coordinates, so that the transpose is one short expression per column.

    Every column is gathered per pixel on its own (complex ones carry a corner's ``x`` and
    ``y`` together; the primal depths and ``w`` go in pairs too): transposed, each is one
    scalar (or complex) scatter-add straight from the cotangent planes.
    """
    cols, tid, covered = primals
    dcols = tangents[0]
    idx = jnp.where(covered, tid, cols[0].shape[0])
    xy = _take_cols(list(cols[:3]), idx)
    x0, x1, x2 = (jnp.real(c) for c in xy)
    y0, y1, y2 = (jnp.imag(c) for c in xy)
    z0, z1 = _take_paired(cols[3], cols[4], idx)
    (z2,) = _take_cols([cols[5]], idx)
    planes = [x0, y0, z0, x1, y1, z1, x2, y2, z2]
    if perspective:
        w0, w1 = _take_paired(cols[6], cols[7], idx)
        planes += [w0, w1] + _take_cols([cols[8]], idx)
    px, py, wk, a, den_safe, good, b = _pixel_bary(planes, covered, perspective)
    depth = jnp.where(covered, b[0] * z0 + b[1] * z1 + b[2] * z2, jnp.inf)
    # the tangents: each corner's (x, y) as one complex gather, the z (no scatter at all when
    # the depth is not differentiated) and w columns alone
    dxy = _take_cols(list(dcols[:3]), idx)
    dx0, dx1, dx2 = (jnp.real(c) for c in dxy)
    dy0, dy1, dy2 = (jnp.imag(c) for c in dxy)
    dz0, dz1, dz2 = _take_cols(list(dcols[3:6]), idx)
    # e0 = (x2 - x1)(py - y1) - (y2 - y1)(px - x1), and cyclically
    de = [dx1 * (y2 - py) + dx2 * (py - y1) + dy1 * (px - x2) + dy2 * (x1 - px),
          dx2 * (y0 - py) + dx0 * (py - y2) + dy2 * (px - x0) + dy0 * (x2 - px),
          dx0 * (y1 - py) + dx1 * (py - y0) + dy0 * (px - x1) + dy1 * (x0 - px)]
    if perspective:
        dwp = _take_cols(list(dcols[6:9]), idx)
        dw = [jnp.where(covered & (planes[9 + k] != 0), dwp[k], 0.0) for k in range(3)]
        da = [(de[k] - a[k] * dw[k]) / wk[k] for k in range(3)]
    else:
        da = de
    dden = da[0] + da[1] + da[2]
    db = [jnp.where(good, (da[k] - b[k] * dden) / den_safe, 0.0) for k in range(3)]
    ddepth = jnp.where(covered, db[0] * z0 + db[1] * z1 + db[2] * z2
                       + b[0] * dz0 + b[1] * dz1 + b[2] * dz2, 0.0)
    return (jnp.stack(b, axis=-1), depth), (jnp.stack(db, axis=-1), ddepth)


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
    cols = _corner_columns(screen_vertices, triangles, w)
    return _bary_depth(cols, triangle_id, covered, w is not None)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _rasterize_single(sv, tri, w, h, wd, chunk, tile, cull):
    tid = _zbuffer(sv, tri, w, h, wd, chunk, tile, cull).reshape(h, wd)
    bary, depth = barycentric_from_ids(sv, tri, tid, w)
    return Fragments(triangle_id=tid, barycentric=bary, depth=depth)


def default_fragment_chunk(image_size: tuple[int, int], tile: int = 2,
                           n_triangles: int = 0) -> int:
    """Default static chunk length (in runs of ``tile**2`` box pixels) of the fragment loop:
    ``max(min(5 * H * W / (2 * tile**2), 2**16), n_triangles / 16, 4096)``.

    Room for 2.5 bounding-box pixels per image pixel (more are processed in further chunks,
    never dropped), but at most ``2**16`` runs, so that the loop's temporaries stay small for
    large images (on CPU, large ones cost more in page faults than the extra chunks cost). Each
    chunk also makes one pass over the triangles, hence the ``n_triangles`` term for very large
    meshes.
    """
    h, wd = int(image_size[0]), int(image_size[1])
    return max(min(5 * h * wd // (2 * tile * tile), 2**16), int(n_triangles) // 16, 4096)


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
      fragment_chunk: static number of stream entries (runs of ``tile**2`` box pixels) per
        chunk of the fragment loop (performance only; default :func:`default_fragment_chunk`).
      tile: static; a triangle's bounding-box pixels are visited in runs of ``tile**2``
        (performance only; 2 suits triangles of a few pixels, larger values larger triangles).

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
             else default_fragment_chunk((h, wd), tile, tri.shape[0]))
    if chunk <= 0:
        raise ValueError(f"fragment_chunk must be positive, got {chunk}")
    if sv.ndim == 3:
        return _rasterize_batched(sv, tri, w, h, wd, chunk, tile, bool(cull_backfaces))
    return _rasterize_single(sv, tri, w, h, wd, chunk, tile, bool(cull_backfaces))


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7))
def _rasterize_batched(sv, tri, w, h, wd, chunk, tile, cull):
    # one image after the other (lax.map): on CPU the batched (vmapped) scatters and gathers
    # cost about twice as much per image as the unbatched ones.
    # Under reverse mode, each image's backward recomputes its barycentrics from the saved
    # triangle ids (jax.checkpoint) rather than reading back a stack of per-pixel residual
    # planes for the whole batch; the z-buffer itself is never recomputed.
    def one(s, w_):
        tid = _zbuffer(s, tri, w_, h, wd, chunk, tile, cull).reshape(h, wd)
        tid = checkpoint_name(tid, "triangle_id")
        bary, depth = barycentric_from_ids(s, tri, tid, w_)
        return Fragments(triangle_id=tid, barycentric=bary, depth=depth)

    one = jax.checkpoint(one, policy=jax.checkpoint_policies.save_only_these_names("triangle_id"))
    if w is None:
        return jax.lax.map(lambda s: one(s, None), sv)
    return jax.lax.map(lambda a: one(a[0], a[1]), (sv, w))
