"""Soft (probabilistic) rasterisation, SoftRas / PyTorch3D style, in pure JAX.

Per pixel the ``K`` nearest faces (by depth) among those whose distance to the pixel centre is
within a blur radius are kept (:func:`soft_rasterize`); each contributes a coverage probability
``D = sigmoid(-dist / sigma)`` where ``dist`` is the signed squared distance in px² from the pixel
centre to the triangle (negative inside); colours are blended with a depth softmax of temperature
``gamma`` plus a background term (:func:`soft_blend`). As ``sigma, gamma -> 0`` the blend tends
to the hard z-buffer image; unlike the hard path it has gradients w.r.t. vertex positions from
pixels near but outside the silhouette.

Radius rule (no silent truncation): a face at squared distance ``d²`` outside the pixel has
``D = sigmoid(-d²/sigma) < eps`` iff ``d² > sigma * log((1 - eps) / eps)``, so the default radius
``soft_radius(sigma, eps) = sqrt(sigma * log((1 - eps) / eps))`` drops only faces with coverage
below ``eps``. When more than ``K`` faces fall within the radius of a pixel, the nearest ``K`` by
depth are kept and the number left out is *reported* per pixel in ``SoftFragments.overflow``
(never silently).

Candidate (face, pixel) pairs are enumerated like the hard rasteriser does (bounding boxes grown
by the radius, cut into tiles, processed in static-size chunks inside ``while_loop``s, so no face
is ever dropped by a capacity limit), in one sweep. Candidates are ordered by a 64-bit key (the
depth's order-preserving bits, then the triangle id, as in the hard z-buffer: nearest first,
ties broken by id). Each chunk's own ``K`` smallest keys per pixel come from ``K`` rounds of
``scatter-min`` (each after the previous round's key), its geometry evaluated once, and are
merged into the running per-pixel top ``K`` by a sorting network; the sweep also counts each
pixel's candidates.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass
from jaxface.render.interpolate import _interp_single
from jaxface.render.rasterize import (
    _centre_span,
    _check_inputs,
    _chunk_tiles,
    _depth_keys,
    _exclusive_offsets,
    _gather_columns_paired,
    _materialise,
    _scatter_min,
)

__all__ = ["SoftFragments", "soft_radius", "soft_rasterize", "soft_interpolate", "soft_blend"]



@pytree_dataclass
class SoftFragments:
    """Output of :func:`soft_rasterize` (leading batch axis when batched).

    Attributes:
      triangle_id: ``(..., H, W, K)`` int32, the K nearest (by depth) faces within the radius,
        nearest first; ``-1`` in unused slots.
      barycentric: ``(..., H, W, K, 3)`` barycentrics of the pixel centre, clipped to the
        triangle (outside pixels get those of the nearest point of the triangle).
      depth: ``(..., H, W, K)`` depth at the clipped barycentrics (``+inf`` in unused slots).
      dist: ``(..., H, W, K)`` signed squared distance (px²) from the pixel centre to the
        triangle, negative inside (``+inf`` in unused slots).
      overflow: ``(..., H, W)`` int32, number of faces within the radius that did not fit in K.
    """

    triangle_id: jax.Array
    barycentric: jax.Array
    depth: jax.Array
    dist: jax.Array
    overflow: jax.Array


def soft_radius(sigma: float, eps: float = 1e-4) -> float:
    """Blur radius (px) beyond which a face's coverage ``sigmoid(-d²/sigma)`` is below ``eps``."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    return math.sqrt(sigma * math.log((1.0 - eps) / eps))


@jax.custom_jvp
def _materialised(x, pred):
    """``x`` (a tuple of arrays) unchanged; its tangents (and so, transposed, its cotangents)
    pass through a conditional on the runtime predicate ``pred`` (always true), which XLA
    cannot fuse across. Reverse mode then computes the cotangents of ``x`` once, into memory,
    instead of XLA:CPU fusing the whole downstream cotangent graph into every consumer (it
    drops ``optimization_barrier``)."""
    return x


@_materialised.defjvp
def _materialised_jvp(primals, tangents):
    x, pred = primals
    t = _materialise(tangents[0], pred)
    return x, t


def _edge_functions(x: list, y: list, px: jax.Array, py: jax.Array) -> list:
    """``[e0, e1, e2]``: ``e_k = (X_b - X_a) x (P - X_a)`` for the edge ``a -> b`` opposite
    corner ``k`` (their sum is the signed doubled area)."""
    return [(x[2] - x[1]) * (py - y[1]) - (y[2] - y[1]) * (px - x[1]),
            (x[0] - x[2]) * (py - y[2]) - (y[0] - y[2]) * (px - x[2]),
            (x[1] - x[0]) * (py - y[0]) - (y[1] - y[0]) * (px - x[0])]


def _clipped_bary(e: list):
    """Barycentrics clipped to the triangle, from the edge functions ``e``: ``b_k = v_k /
    sum(v)`` with ``v_k = max(s e_k, 0)``, ``s`` the sign of the area (the same as clamping
    ``e_k / area`` at 0 and renormalising: ``b`` does not change when all the ``v_k`` scale by a
    positive factor). Returns ``(b, v, inv_sum, s, nondeg, inside)``."""
    area = e[0] + e[1] + e[2]
    nondeg = area != 0
    s = jnp.where(area > 0, 1.0, -1.0)
    v = [jnp.maximum(ek * s, 0.0) for ek in e]
    inside = nondeg & (e[0] * s >= 0) & (e[1] * s >= 0) & (e[2] * s >= 0)
    sv = jnp.where(nondeg, v[0] + v[1] + v[2], 1.0)  # > 0 on non-degenerate triangles
    # divided (not multiplied by 1 / sv): a pixel nearest to a corner gets exactly that corner's
    # values, so triangles sharing the corner tie exactly there (broken by id)
    return [vk / sv for vk in v], v, 1.0 / sv, s, nondeg, inside


def _point_tri_math(x: list, y: list, px: jax.Array, py: jax.Array):
    """Pixel centre against triangle (the primal of :func:`_point_tri_planes`), plane by plane.

    ``x``, ``y``: the corners' coordinates ``[x0, x1, x2]``, ``[y0, y1, y2]`` broadcasting
    against ``px``/``py``. Returns ``(dist, [b0, b1, b2], res)``; ``res`` holds what the JVP
    needs: the clipped barycentrics' terms (:func:`_clipped_bary`) and, for the nearest edge,
    the weights ``w_k`` of the corners in its nearest point and the gradient ``(gx, gy)`` of
    ``dist`` w.r.t. that point."""
    e = _edge_functions(x, y, px, py)
    b, v, inv, s, nondeg, inside = _clipped_bary(e)
    # the nearest point of each edge a -> b: a + tt (b - a); the nearest edge's kept (the first
    # one among equal distances, as a chain of minimums gives the same value)
    d2 = None
    for a, bb in ((1, 2), (2, 0), (0, 1)):
        ex, ey = x[bb] - x[a], y[bb] - y[a]
        l2 = ex * ex + ey * ey
        tt = ((px - x[a]) * ex + (py - y[a]) * ey) / jnp.where(l2 > 0, l2, 1.0)
        tt = jnp.clip(jnp.where(l2 > 0, tt, 0.0), 0.0, 1.0)
        dx, dy = px - x[a] - tt * ex, py - y[a] - tt * ey
        d2k = dx * dx + dy * dy
        wk = [jnp.zeros_like(tt)] * 3
        wk[a], wk[bb] = 1.0 - tt, tt
        if d2 is None:
            d2, ddx, ddy, w = d2k, dx, dy, wk
        else:
            closer = d2k < d2
            d2 = jnp.where(closer, d2k, d2)
            ddx, ddy = jnp.where(closer, dx, ddx), jnp.where(closer, dy, ddy)
            w = [jnp.where(closer, wn, wo) for wn, wo in zip(wk, w, strict=True)]
    dist = jnp.where(inside, -d2, d2)
    # d(dist) = g . d(nearest point), the nearest point moving with its edge's corners (at an
    # interior nearest point, its move along the edge changes the distance only to 2nd order)
    sgn = jnp.where(inside, 2.0, -2.0)
    res = (v, jnp.where(nondeg, inv, 0.0), s, w, sgn * ddx, sgn * ddy)
    return dist, b, res


@jax.custom_jvp
def _point_tri_planes(x0, y0, x1, y1, x2, y2, px, py):
    """Signed squared distance and clipped barycentrics of pixel centres in triangles, with a
    hand-written JVP (see :func:`_point_tri_math`): ``(dist, b0, b1, b2)``.

    ``dist`` is the signed squared distance (px², negative inside) to the triangle, ``b_k`` the
    barycentrics clipped to the triangle (clamped at 0 and renormalised). The corner
    coordinates broadcast against the pixel centres ``px``/``py`` (not differentiated). The
    JVP is a few per-plane products: plain autodiff of the same planes transposes, on XLA:CPU,
    into dozens of passes over the ``(H, W, K)`` planes."""
    dist, b, _ = _point_tri_math([x0, x1, x2], [y0, y1, y2], px, py)
    return dist, b[0], b[1], b[2]


@_point_tri_planes.defjvp
def _point_tri_planes_jvp(primals, tangents):
    x0, y0, x1, y1, x2, y2, px, py = primals
    x, y = [x0, x1, x2], [y0, y1, y2]
    tx, ty = list(tangents[0:6:2]), list(tangents[1:6:2])
    dist, b, (v, inv, s, w, gx, gy) = _point_tri_math(x, y, px, py)
    # the nearest point moves by sum_k w_k dX_k; d(dist) = g . that move
    ddist = (gx * (w[0] * tx[0] + w[1] * tx[1] + w[2] * tx[2])
             + gy * (w[0] * ty[0] + w[1] * ty[1] + w[2] * ty[2]))

    def cross(k, rx, ry):  # dX_k x r
        return tx[k] * ry - ty[k] * rx

    # e_k = (X_b - X_a) x (P - X_a) for the edge a -> b opposite corner k:
    # de_k = dX_b x (P - X_a) + dX_a x (X_b - P)
    de = []
    for a, bb in ((1, 2), (2, 0), (0, 1)):
        de.append(cross(bb, px - x[a], py - y[a]) + cross(a, x[bb] - px, y[bb] - py))
    # b = v / sum(v) with v_k = max(s e_k, 0); inv = 1 / sum(v), 0 on degenerate triangles (no
    # tangent there)
    dv = [jnp.where(vk > 0, s * dek, 0.0) for vk, dek in zip(v, de, strict=True)]
    ds = dv[0] + dv[1] + dv[2]
    db = [(dvk - bk * ds) * inv for dvk, bk in zip(dv, b, strict=True)]
    return (dist, b[0], b[1], b[2]), (ddist, db[0], db[1], db[2])


def _candidates(v, tri, h, wd, radius, chunk, tile):
    """Tile stream over bounding boxes grown by ``radius``: returns (frag_data, n_chunks)."""
    nf = tri.shape[0]
    npix = h * wd
    p = v[tri]  # (F, 3, 3)
    x, y = p[..., 0], p[..., 1]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    ok = jnp.all(jnp.isfinite(p), axis=(1, 2)) & (area != 0)
    big = 4.0 * max(h, wd) + 8.0 + radius
    xmin = jnp.clip(jnp.min(x, 1) - radius, -big, big)
    xmax = jnp.clip(jnp.max(x, 1) + radius, -big, big)
    ymin = jnp.clip(jnp.min(y, 1) - radius, -big, big)
    ymax = jnp.clip(jnp.max(y, 1) + radius, -big, big)
    jmin, jmax = _centre_span(xmin, xmax, wd)
    imin, imax = _centre_span(ymin, ymax, h)
    nx = jnp.where(ok, jnp.maximum(jmax - jmin + 1.0, 0.0), 0.0)
    ny = jnp.where(ok, jnp.maximum(imax - imin + 1.0, 0.0), 0.0)
    ntx = jnp.ceil(nx / tile)
    countf = ntx * jnp.ceil(ny / tile)
    # an int32 overflow of the candidate count cannot be processed: it is reported, not hidden
    too_many = jnp.sum(countf) > float(2**30)
    count = jnp.where(too_many, 0, countf.astype(jnp.int32))
    offsets, total = _exclusive_offsets(count)
    tab = jnp.concatenate([p.reshape(nf, 9), jnp.stack([jmin, imin, jmax, imax,
                                                        jnp.maximum(ntx, 1.0)], 1)],
                          1).astype(jnp.float32)
    # a box has at most ceil(H / tile) * ceil(W / tile) tiles
    expand = _chunk_tiles(tab, 9, chunk, tile, max_tiles=-(-h // tile) * -(-wd // tile))
    r2 = jnp.float32(radius * radius)

    def frag_data(k):
        t, row, col, rr, valid = expand(k, offsets, total)
        px, py = col + 0.5, rr + 0.5
        c = [row[:, i:i + 1] for i in range(9)]
        x, y = c[0::3], c[1::3]
        e = _edge_functions(x, y, px, py)
        b, _, _, _, nondeg, inside = _clipped_bary(e)
        # the same expression as the slots' depth in _soft_single (w = None)
        depth = b[0] * c[2] + b[1] * c[5] + b[2] * c[8]
        # within the radius of the triangle: inside, or within it of an edge segment a -> b,
        # without divisions: of the endpoint a (b) when the pixel projects before a (past b),
        # otherwise of the edge's line: (e_k / |b - a|)^2 <= r^2
        near = inside
        d2 = [(px - x[k]) ** 2 + (py - y[k]) ** 2 for k in range(3)]
        for k, (a, bb) in enumerate(((1, 2), (2, 0), (0, 1))):
            ex, ey = x[bb] - x[a], y[bb] - y[a]
            l2 = ex * ex + ey * ey
            dot = (px - x[a]) * ex + (py - y[a]) * ey
            near = near | jnp.where(dot <= 0, d2[a] <= r2,
                                    jnp.where(dot >= l2, d2[bb] <= r2, e[k] * e[k] <= r2 * l2))
        keep = valid & nondeg & near & jnp.isfinite(depth)
        pix = jnp.where(keep, (rr * wd + col).astype(jnp.int32), npix).reshape(-1)
        tt = jnp.broadcast_to(t[:, None], keep.shape).reshape(-1)
        return tt, pix, depth.reshape(-1)

    n_chunks = (total + chunk - 1) // chunk
    return frag_data, n_chunks, too_many


def _merge_sorted(a: list, b: list) -> list:
    """The ``K`` smallest of two ascending lists of ``K`` same-shape planes, ascending: an
    odd-even transposition network over the ``2K`` planes (elementwise min / max)."""
    x = list(a) + list(b)
    n = len(x)
    for r in range(n):
        for i in range(r % 2, n - 1, 2):
            lo, hi = jnp.minimum(x[i], x[i + 1]), jnp.maximum(x[i], x[i + 1])
            x[i], x[i + 1] = lo, hi
    return x[:len(a)]


def _select_k(v, tri, h, wd, radius, k_faces, chunk, tile):
    """Non-differentiable: ids (H*W, K) nearest-by-depth within radius, overflow (H*W,)."""
    npix = h * wd
    frag_data, n_chunks, too_many = _candidates(jax.lax.stop_gradient(v), tri, h, wd, radius,
                                                chunk, tile)
    empty = np.uint64(2**64 - 1)

    def chunk_fn(d, state, first=False):
        """Merge a chunk's candidates into the per-pixel top K (and count them).

        The chunk's own K smallest keys per pixel come from K rounds of scatter-min (each
        round: the smallest key after the previous round's), its geometry evaluated once; the
        two sorted lists of K keys per pixel are then merged by a sorting network."""
        cnt, top = state
        t, pix, depth = d
        # 64-bit (depth, id) keys: the depth's order-preserving bits, then the triangle id, so
        # that one unsigned comparison orders candidates by depth and breaks ties by id
        # the pixels, then the keys, each computed once into memory: XLA:CPU would otherwise
        # recompute the candidates' geometry for the keys and in each of the K rounds below
        pix = _materialise(pix, pix[0] >= 0)
        key = _materialise(_depth_keys(depth, t, pix < npix), pix[0] >= 0)
        cnt = cnt.at[pix].add(1, mode="drop")
        # candidates behind the running K-th nearest of their pixel cannot enter: dropped from
        # the rounds (an empty running slot holds the all-ones key, behind everything)
        live = pix if first else jnp.where(key < top[-1][jnp.minimum(pix, npix - 1)], pix, npix)
        own = []
        for j in range(k_faces):
            target = live
            if j:
                target = jnp.where(key > own[-1][jnp.minimum(pix, npix - 1)], live, npix)
            own.append(_scatter_min(jnp.full((npix,), empty, jnp.uint64), target, key))
        return cnt, _merge_sorted(top, own)

    with jax.enable_x64(True):
        init = (jnp.zeros((npix,), jnp.int32),
                [jnp.full((npix,), empty, jnp.uint64) for _ in range(k_faces)])
        state = chunk_fn(frag_data(jnp.int32(0)), init, first=True)

        def body(c):
            k, st = c
            return k + 1, chunk_fn(frag_data(k), st)

        count, slots = jax.lax.while_loop(lambda c: c[0] < n_chunks, body,
                                          (jnp.int32(1), state))[1]
        low = [(q & jnp.uint64(0xFFFFFFFF)).astype(jnp.uint32) for q in slots]
    ids = jnp.stack([jax.lax.bitcast_convert_type(q, jnp.int32) for q in low], axis=1)
    overflow = jnp.maximum(count - k_faces, 0)
    # an int32 overflow of the candidate count: report every pixel as overflowing
    overflow = jnp.where(too_many, jnp.int32(np.iinfo(np.int32).max), overflow)
    return ids, overflow


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _soft_single(sv, tri, h, wd, radius, k_faces, chunk, tile, w=None):
    nf = tri.shape[0]
    if nf == 0:  # no faces: every slot of every pixel is empty
        inf = jnp.full((h, wd, k_faces), jnp.inf, sv.dtype)
        return SoftFragments(triangle_id=jnp.full((h, wd, k_faces), -1, jnp.int32),
                             barycentric=jnp.zeros((h, wd, k_faces, 3), sv.dtype),
                             depth=inf, dist=inf, overflow=jnp.zeros((h, wd), jnp.int32))
    ids, overflow = _select_k(sv, tri, h, wd, radius, k_faces, chunk, tile)
    ids = ids.reshape(h, wd, k_faces)
    valid = ids >= 0
    table = sv[tri].reshape(nf, 9)
    # (H, W, K) planes of the slots' triangles, gathered column by column (transposed: scalar
    # scatter-adds; a gather of rows of 9 transposes, on XLA:CPU, into one fusion that
    # recomputes the whole cotangent graph for each of the 9 row entries), two columns per
    # gather (complex pairs: each corner's x and y, then z0 and z1)
    c = _gather_columns_paired(table, ids, valid,
                               [(0, 1), (3, 4), (6, 7), (2, 5)])
    idx = jnp.where(valid, ids, nf)
    py, px = jnp.meshgrid(jnp.arange(h, dtype=table.dtype) + 0.5,
                          jnp.arange(wd, dtype=table.dtype) + 0.5, indexing="ij")
    dist, *b = _point_tri_planes(*c[0:2], *c[3:5], *c[6:8], px[..., None], py[..., None])
    if w is not None:
        # perspective-correct: screen-space barycentrics weighted by 1 / w, renormalised
        wtri = w[tri]
        q = [b[k] / jnp.maximum(jnp.take(wtri[:, k], idx, mode="fill", fill_value=1), 1e-6)
             for k in range(3)]
        sq = jnp.maximum(q[0] + q[1] + q[2], 1e-30)
        b = [qk / sq for qk in q]
    depth = b[0] * c[2] + b[1] * c[5] + b[2] * c[8]
    dist, b0, b1, b2, depth = _materialised((dist, b[0], b[1], b[2], depth), jnp.all(ids >= -1))
    b = [b0, b1, b2]
    return SoftFragments(
        triangle_id=ids,
        barycentric=jnp.where(valid[..., None], jnp.stack(b, axis=-1), 0.0),
        depth=jnp.where(valid, depth, jnp.inf),
        dist=jnp.where(valid, dist, jnp.inf),
        overflow=overflow.reshape(h, wd),
    )


def soft_rasterize(
    screen_vertices: jax.Array,
    triangles: jax.Array,
    image_size: tuple[int, int],
    *,
    sigma: float = 1e-1,
    faces_per_pixel: int = 8,
    radius: float | None = None,
    eps: float = 1e-4,
    fragment_chunk: int | None = None,
    tile: int = 2,
    w: jax.Array | None = None,
) -> SoftFragments:
    """Find, per pixel, the ``faces_per_pixel`` (K) nearest faces within the blur radius.

    Args:
      screen_vertices: ``(V, 3)`` or ``(B, V, 3)`` pixels + depth (as :func:`rasterize`).
      triangles: ``(F, 3)`` int.
      image_size: ``(H, W)``.
      sigma: sharpness (px²) used to derive the default radius (use the same in
        :func:`soft_blend`).
      faces_per_pixel: K (static).
      radius: blur radius in px; default :func:`soft_radius` ``(sigma, eps)``.
      eps: coverage threshold of the radius rule.
      fragment_chunk, tile: performance knobs as in :func:`rasterize`.
      w: optional ``(V,)`` / ``(B, V)`` clip-space w per vertex (``to_screen(...).w``): the
        barycentrics (and the interpolated depth) become perspective-correct, as in
        :func:`rasterize`; the coverage distances stay in screen space.

    Returns:
      :class:`SoftFragments`; ``overflow`` counts faces within the radius beyond K per pixel.
      ``barycentric``, ``depth`` and ``dist`` are differentiable w.r.t. ``screen_vertices``
      (and ``w``).
    """
    sv, tri, (h, wd), w = _check_inputs(screen_vertices, triangles, image_size, w)
    if radius is None:
        radius = soft_radius(sigma, eps)
    radius = float(radius)
    if not radius >= 0:
        raise ValueError(f"radius must be non-negative, got {radius}")
    k_faces = int(faces_per_pixel)
    if k_faces < 1:
        raise ValueError(f"faces_per_pixel must be >= 1, got {faces_per_pixel}")
    tile = int(tile)
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    chunk = int(fragment_chunk) if fragment_chunk is not None else max(
        4 * h * wd // (tile * tile), 4096)
    if sv.ndim == 3:
        if w is None:
            return jax.vmap(lambda s: _soft_single(s, tri, h, wd, radius, k_faces, chunk,
                                                   tile))(sv)
        return jax.vmap(lambda s, ww: _soft_single(s, tri, h, wd, radius, k_faces, chunk, tile,
                                                   w=ww))(sv, w)
    return _soft_single(sv, tri, h, wd, radius, k_faces, chunk, tile, w=w)


def soft_interpolate(attributes: jax.Array, fragments: SoftFragments,
                     triangles: jax.Array) -> jax.Array:
    """Interpolate ``(V, C)`` attributes for every slot: ``(H, W, K, C)`` (zeros in empty slots).
    Batched fragments take ``(B, V, C)`` or shared ``(V, C)`` attributes."""
    attributes = jnp.asarray(attributes)
    tri = jnp.asarray(triangles, jnp.int32)

    # the hard path's interpolation (paired column gathers, per-channel planes; zeros for a mesh
    # without triangles), with a slot axis K after the pixel axes
    if fragments.triangle_id.ndim == 4:
        ax = 0 if attributes.ndim == 3 else None
        return jax.vmap(_interp_single, in_axes=(ax, 0, 0, None))(
            attributes, fragments.triangle_id, fragments.barycentric, tri)
    return _interp_single(attributes, fragments.triangle_id, fragments.barycentric, tri)


def soft_blend(
    colors: jax.Array,
    fragments: SoftFragments,
    *,
    sigma: float = 1e-1,
    gamma: float = 1e-2,
    background: jax.Array | float = 0.0,
    znear: float,
    zfar: float,
    eps: float = 1e-10,
) -> jax.Array:
    """SoftRas / PyTorch3D ``softmax_rgb_blend``.

    ``D_k = sigmoid(-dist_k / sigma)``; ``zn_k = (zfar - z_k) / (zfar - znear)``;
    ``w_k = D_k exp((zn_k - m) / gamma)``, background weight ``exp((eps - m) / gamma)`` with
    ``m = max(max_k zn_k, eps)``; colour ``= (sum_k w_k c_k + w_bg bg) / (sum_k w_k + w_bg)``;
    alpha ``= 1 - prod_k (1 - D_k)``.

    Args:
      colors: ``(..., H, W, K, C)`` per-slot colours (e.g. :func:`soft_interpolate`).
      fragments: from :func:`soft_rasterize`.
      sigma, gamma: sharpness (px²) and depth-softmax temperature.
      background: scalar or ``(C,)`` background colour.
      znear, zfar: depth range used to normalise depths (depths outside are clipped).

    Returns:
      ``(..., H, W, C + 1)`` RGBA.
    """
    if not (sigma > 0 and gamma > 0):
        raise ValueError(f"sigma and gamma must be positive, got {sigma}, {gamma}")
    if not zfar > znear:
        raise ValueError(f"zfar must exceed znear, got {znear}, {zfar}")
    # slot by slot (K is small and static): XLA:CPU runs reductions over a short last axis
    # as slow dot-like kernels, forward and transposed
    n_k = fragments.triangle_id.shape[-1]
    valid = [fragments.triangle_id[..., k] >= 0 for k in range(n_k)]
    prob, zn = [], []
    for k in range(n_k):
        dist = jnp.where(valid[k], fragments.dist[..., k], 0.0)
        prob.append(jnp.where(valid[k], jax.nn.sigmoid(-dist / sigma), 0.0))
        depth = jnp.where(valid[k], fragments.depth[..., k], zfar)
        z = jnp.clip((zfar - depth) / (zfar - znear), 0.0, 1.0)
        zn.append(jnp.where(valid[k], z, 0.0))
    m = functools.reduce(jnp.maximum, zn, jnp.asarray(eps, zn[0].dtype))
    m = jax.lax.stop_gradient(m)
    alpha = 1.0 - functools.reduce(jnp.multiply, [1.0 - p for p in prob])
    wk = [prob[k] * jnp.exp((zn[k] - m) / gamma) for k in range(n_k)]
    wbg = jnp.exp((eps - m) / gamma)
    bg = jnp.broadcast_to(jnp.asarray(background, colors.dtype), colors.shape[-1:])
    # per-slot, per-channel planes (unstacked: the transposes are single stacks, not a padded
    # copy of the whole colour array per slot and reductions over the short channel axis)
    col = [jnp.unstack(ck, axis=-1) for ck in jnp.unstack(colors, axis=-2)]
    den = functools.reduce(jnp.add, wk) + wbg
    # the weights computed once into memory (XLA:CPU would fuse them into each channel's plane)
    pred = fragments.triangle_id.reshape(-1)[0] >= -1  # always true, known at run time only
    wk, wbg, den = _materialise((wk, wbg, den), pred)
    rgb = [(functools.reduce(jnp.add, [wk[k] * col[k][c] for k in range(n_k)]) + wbg * bg[c])
           / den for c in range(colors.shape[-1])]
    # stacked first and moved last, as in interpolate: XLA:CPU then computes the planes one by
    # one, not the whole blend again for each channel of each pixel
    return jnp.moveaxis(jnp.stack([*rgb, alpha], axis=0), 0, -1)
