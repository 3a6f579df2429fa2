"""Hard rasteriser: agreement with the NumPy reference, batching, robustness, gradients."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.render.rasterize import Fragments, rasterize
from jaxface.render.reference import fit_to_image, rasterize_reference
from tests.jaxpr_tools import dot_precisions

# the module (the package attribute ``jaxface.render.rasterize`` is the function)
rast_mod = importlib.import_module("jaxface.render.rasterize")


def random_mesh(rng, n_vertices=60, n_faces=50, size=(40, 56), spread=6.0):
    h, w = size
    v = np.stack([rng.uniform(-spread, w + spread, n_vertices),
                  rng.uniform(-spread, h + spread, n_vertices),
                  rng.uniform(1.0, 10.0, n_vertices)], 1).astype(np.float32)
    f = rng.integers(0, n_vertices, (n_faces, 3)).astype(np.int32)
    return v, f


def mismatch_fraction(ids, ref):
    covered = max(int((ref >= 0).sum()), 1)
    return float((np.asarray(ids) != ref).sum()) / covered


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("tile,chunk", [(2, None), (3, 5)])
def test_matches_reference_random(seed, tile, chunk):
    rng = np.random.default_rng(seed)
    v, f = random_mesh(rng)
    fr = rasterize(v, f, (40, 56), tile=tile, fragment_chunk=chunk)
    ids, bary, depth = rasterize_reference(v, f, (40, 56))
    assert fr.triangle_id.dtype == jnp.int32
    assert fr.triangle_id.shape == (40, 56)
    assert (ids >= 0).sum() > 500
    assert mismatch_fraction(fr.triangle_id, ids) <= 1e-3
    same = np.asarray(fr.triangle_id) == ids
    m = same & (ids >= 0)
    np.testing.assert_allclose(np.asarray(fr.barycentric)[m], bary[m], atol=2e-4)
    np.testing.assert_allclose(np.asarray(fr.depth)[m], depth[m], rtol=1e-5, atol=1e-4)
    assert np.all(np.isinf(np.asarray(fr.depth)[ids < 0]))
    np.testing.assert_array_equal(np.asarray(fr.barycentric)[ids < 0], 0.0)


def test_perspective_w_and_culling_match_reference(rng):
    v, f = random_mesh(rng)
    wv = rng.uniform(0.5, 3.0, v.shape[0]).astype(np.float32)
    fr = rasterize(v, f, (40, 56), w=wv)
    ids, bary, _ = rasterize_reference(v, f, (40, 56), w=wv)
    assert mismatch_fraction(fr.triangle_id, ids) <= 1e-3
    m = (np.asarray(fr.triangle_id) == ids) & (ids >= 0)
    np.testing.assert_allclose(np.asarray(fr.barycentric)[m], bary[m], atol=2e-4)
    np.testing.assert_allclose(np.asarray(fr.barycentric).sum(-1)[ids >= 0], 1.0, atol=1e-5)
    fr_c = rasterize(v, f, (40, 56), cull_backfaces=True)
    ids_c, _, _ = rasterize_reference(v, f, (40, 56), cull_backfaces=True)
    assert mismatch_fraction(fr_c.triangle_id, ids_c) <= 1e-3
    assert (ids_c >= 0).sum() < (ids >= 0).sum()


def test_perspective_barycentrics_are_correct():
    # a quad in 3D at slanted depth, projected with a pinhole; interpolating camera-space
    # points with perspective-correct barycentrics must reproduce the ray/plane intersection
    fx, cx, cy = 30.0, 16.0, 16.0
    cam = np.array([[-1, -1, 2.0], [1, -1, 4.0], [1, 1, 4.0], [-1, 1, 2.0]])
    scr = np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fx * cam[:, 1] / cam[:, 2] + cy,
                    cam[:, 2]], 1).astype(np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    fr = rasterize(scr, f, (32, 32), w=cam[:, 2].astype(np.float32))
    from jaxface.render.interpolate import interpolate
    p = np.asarray(interpolate(jnp.asarray(cam, jnp.float32), fr, f))
    m = np.asarray(fr.mask)
    assert m.sum() > 50
    jj, ii = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5)
    # the point must lie on the pixel's ray: x/z = (u - cx)/fx
    z = np.where(m, p[..., 2], 1.0)
    np.testing.assert_allclose((p[..., 0] / z)[m], ((jj - cx) / fx)[m], atol=1e-4)
    np.testing.assert_allclose((p[..., 1] / z)[m], ((ii - cy) / fx)[m], atol=1e-4)
    np.testing.assert_allclose(np.asarray(fr.depth)[m], p[..., 2][m], rtol=1e-5)


def test_ties_go_to_smallest_id_and_shared_edges_have_no_holes():
    # a square split on its diagonal, duplicated at the same depth: the smaller ids win
    v = np.array([[2, 2, 1], [30, 2, 1], [30, 30, 1], [2, 30, 1]], np.float32)
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 2, 3]], np.int32)
    fr = rasterize(v, f, (32, 32))
    ids = np.asarray(fr.triangle_id)
    inside = np.zeros((32, 32), bool)
    inside[2:30, 2:30] = True
    assert np.all(ids[inside] >= 0) and np.all(ids[~inside] == -1)
    assert set(np.unique(ids[inside])) == {0, 1}


def test_batch_and_vmap_and_jit(rng):
    meshes = [random_mesh(np.random.default_rng(s), n_faces=30) for s in range(3)]
    f = meshes[0][1]
    vb = np.stack([m[0] for m in meshes])
    fb = rasterize(vb, f, (40, 56))
    fv = jax.jit(jax.vmap(lambda x: rasterize(x, f, (40, 56))))(jnp.asarray(vb))
    assert isinstance(fb, Fragments) and fb.triangle_id.shape == (3, 40, 56)
    for b in range(3):
        single = rasterize(vb[b], f, (40, 56))
        for other in (fb, fv):
            np.testing.assert_array_equal(other.triangle_id[b], single.triangle_id)
            np.testing.assert_allclose(other.barycentric[b], single.barycentric, atol=1e-6)


def test_big_offscreen_degenerate_and_nan_triangles_are_harmless():
    v = np.array([
        [-500, -500, 5], [900, -500, 5], [-500, 900, 5],  # 0-2 screen-filling, far
        [5, 5, 1], [20, 5, 1], [5, 20, 1],  # 3-5 small near
        [10, 10, 0.5], [10, 10, 0.5], [10, 10, 0.5],  # 6-8 zero area, nearest
        [1e6, 1e6, 0], [1e6 + 5, 1e6, 0], [1e6, 1e6 + 5, 0],  # 9-11 far off-screen
        [np.nan, 3, 0], [20, 20, 0], [3, 20, 0],  # 12-14 NaN vertex
    ], np.float32)
    f = np.arange(15, dtype=np.int32).reshape(5, 3)
    fr = rasterize(v, f, (24, 32))
    ids = np.asarray(fr.triangle_id)
    ref, _, _ = rasterize_reference(np.nan_to_num(v, nan=1e9), f[[0, 1, 2, 3]], (24, 32))
    np.testing.assert_array_equal(ids, ref)
    assert set(np.unique(ids)) == {0, 1}
    assert np.isfinite(np.asarray(fr.barycentric)).all()


def test_many_epochs_give_the_same_result(monkeypatch, rng):
    v, f = random_mesh(rng, n_faces=20)
    monkeypatch.setattr(rast_mod, "_EPOCH", 7.0)  # tiny epochs exercise the int32-safety loop
    rast_mod._rasterize_single.clear_cache()
    fr = rasterize(v, f, (40, 56))
    ids, _, _ = rasterize_reference(v, f, (40, 56))
    rast_mod._rasterize_single.clear_cache()
    assert mismatch_fraction(fr.triangle_id, ids) <= 1e-3


def test_bad_inputs_raise():
    v = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="screen_vertices"):
        rasterize(np.zeros((3, 2)), [[0, 1, 2]], (8, 8))
    with pytest.raises(ValueError, match="triangles"):
        rasterize(v, [[0, 1, 3]], (8, 8))
    with pytest.raises(ValueError, match="image_size"):
        rasterize(v, [[0, 1, 2]], (8,))
    with pytest.raises(ValueError, match="w must"):
        rasterize(v, [[0, 1, 2]], (8, 8), w=np.ones(4))


def test_ict_face_matches_reference(data_dir):
    d = np.load(data_dir / "ict-facekit" / "ict_face_model_light.npz")
    f = d["triangles"].astype(np.int32)
    assert f.shape == (52220, 3)
    size = (256, 256)
    v = fit_to_image(d["neutral"], size)
    fr = rasterize(v, f, size)
    ids, _, _ = rasterize_reference(v, f, size)
    assert (ids >= 0).sum() > 0.3 * 256 * 256
    assert mismatch_fraction(fr.triangle_id, ids) <= 1e-3


@jax.jit
def _interior_loss_jit(v, colors, w):
    return _interior_loss(v, _GRAD_F, colors, (32, 32), w)


_GRAD_F = np.array([[0, 1, 2], [1, 3, 2]], np.int32)


def _interior_loss(v, f, colors, size, w=None):
    from jaxface.render.interpolate import interpolate
    fr = rasterize(v, f, size, w=w)
    img = interpolate(colors, fr, f)
    weights = jnp.sin(jnp.arange(img.size, dtype=img.dtype)).reshape(img.shape)
    return jnp.sum(img * weights)


def test_interior_gradients_match_finite_differences():
    with jax.enable_x64(True):
        v = jnp.array([[3.3, 4.1, 1.0], [25.7, 6.2, 2.0], [12.4, 27.9, 3.0],
                       [28.1, 29.3, 2.5]], jnp.float64)
        colors = jnp.array([[1.0, 0.2], [0.1, 0.9], [0.5, 0.5], [0.3, 0.0]], jnp.float64)
        wv = jnp.array([1.0, 1.5, 2.0, 1.2], jnp.float64)
        for w in (None, wv):
            g = jax.grad(_interior_loss_jit)(v, colors, w)
            eps = 1e-4
            for idx in [(0, 0), (1, 1), (2, 0), (3, 1), (1, 2)]:
                if idx[1] == 2 and w is None:
                    continue  # depth does not change the image of non-overlapping triangles
                dv = jnp.zeros_like(v).at[idx].set(eps)
                fd = (_interior_loss_jit(v + dv, colors, w)
                      - _interior_loss_jit(v - dv, colors, w)) / (2 * eps)
                np.testing.assert_allclose(g[idx], fd, rtol=1e-5, atol=1e-7)
                assert abs(float(fd)) > 0 or idx[1] == 2


def test_no_nan_gradients_in_degenerate_cases():
    f = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
    colors = jnp.ones((6, 3))
    cases = {
        "zero_area": np.array([[5, 5, 1], [5, 5, 1], [5, 5, 1], [1, 1, 2], [10, 1, 2],
                               [1, 10, 2]], np.float32),
        "border": np.array([[0, 0, 1], [16, 0, 1], [0, 16, 1], [16, 16, 1], [0, 16, 1],
                            [16, 0, 1]], np.float32),
        "empty": np.array([[-50, -50, 1], [-40, -50, 1], [-50, -40, 1], [100, 100, 1],
                           [110, 100, 1], [100, 110, 1]], np.float32),
    }
    grad = jax.jit(jax.grad(lambda v, w: _interior_loss(v, f, colors, (16, 16), w),
                            argnums=(0, 1)))
    grad_now = jax.jit(jax.grad(lambda v: _interior_loss(v, f, colors, (16, 16))))
    for name, v in cases.items():
        gv, gw = grad(jnp.asarray(v), jnp.ones(6))
        assert np.isfinite(np.asarray(gv)).all() and np.isfinite(np.asarray(gw)).all(), name
        assert np.isfinite(np.asarray(grad_now(jnp.asarray(v)))).all(), name


def test_equal_depth_ties_go_to_the_smallest_id_whatever_the_order_and_chunking(rng):
    # every triangle twice with bitwise-identical vertices (so bitwise-equal depths), the copies
    # shuffled: each pixel must show the copy with the smaller index, for any chunk/tile split
    v, f = random_mesh(rng, n_faces=40)
    ids0 = np.asarray(rasterize(v, f, (40, 56)).triangle_id)
    perm = rng.permutation(len(f))
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(f))
    f2 = np.concatenate([f[perm], f])  # triangle j sits at inv[j] and at len(f) + j
    expected = np.where(ids0 >= 0, inv[np.maximum(ids0, 0)], -1)
    assert (expected >= 0).sum() > 500
    for tile, chunk in [(2, None), (1, 7), (3, 2)]:
        ids = np.asarray(rasterize(v, f2, (40, 56), tile=tile, fragment_chunk=chunk).triangle_id)
        np.testing.assert_array_equal(ids, expected)
    # the reversed concatenation: now the second block's copies have the smaller ids
    f3 = np.concatenate([f, f[perm]])
    ids = np.asarray(rasterize(v, f3, (40, 56), fragment_chunk=5).triangle_id)
    np.testing.assert_array_equal(ids, ids0)


def _bary_autodiff_reference(sv, tri, tid, w=None):
    """The earlier (H, W, 3)-array formulation of barycentric_from_ids, kept as a reference."""
    h, wd = tid.shape
    covered = tid >= 0
    t = jnp.where(covered, tid, 0)
    p = sv[tri][t]  # (H, W, 3, 3)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    py, px = jnp.meshgrid(jnp.arange(h, dtype=p.dtype) + 0.5, jnp.arange(wd, dtype=p.dtype) + 0.5,
                          indexing="ij")
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    e = jnp.stack([(x2 - x1) * (py - y1) - (y2 - y1) * (px - x1),
                   (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2),
                   (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)], -1)
    if w is not None:
        wv = w[tri][t]
        e = e / jnp.where(covered[..., None] & (wv != 0), wv, 1.0)
    den = jnp.sum(e, -1, keepdims=True)
    good = covered[..., None] & (den != 0)
    bary = jnp.where(good, e / jnp.where(good, den, 1.0), 0.0)
    depth = jnp.where(covered, jnp.sum(bary * z, -1), jnp.inf)
    return bary, depth


def test_barycentric_values_and_gradients_match_reference_formulation(rng):
    from jaxface.render.rasterize import barycentric_from_ids
    v, f = random_mesh(rng, n_faces=30)
    wv = rng.uniform(0.5, 3.0, v.shape[0])
    tid = jnp.asarray(rasterize(v, f, (40, 56)).triangle_id)
    with jax.enable_x64(True):
        r = np.random.default_rng(3)
        gb = jnp.asarray(r.normal(size=(40, 56, 3)))
        gd = jnp.asarray(r.normal(size=(40, 56)))
        vv, ww = jnp.asarray(v, jnp.float64), jnp.asarray(wv)

        def loss(fn, sv, w):
            b, d = fn(sv, jnp.asarray(f), tid, w)
            return jnp.sum(b * gb) + jnp.sum(jnp.where(tid >= 0, d, 0.0) * gd)

        for w in (None, ww):
            argnums = (0,) if w is None else (0, 1)
            got = jax.grad(lambda s, w_: loss(barycentric_from_ids, s, w_), argnums)(vv, w)
            ref = jax.grad(lambda s, w_: loss(_bary_autodiff_reference, s, w_), argnums)(vv, w)
            b1, d1 = barycentric_from_ids(vv, jnp.asarray(f), tid, w)
            b2, d2 = _bary_autodiff_reference(vv, jnp.asarray(f), tid, w)
            np.testing.assert_allclose(b1, b2, rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(np.isinf(d1), np.isinf(d2))
            for g1, g2 in zip(got, ref, strict=True):
                assert float(jnp.max(jnp.abs(g2))) > 0
                np.testing.assert_allclose(g1, g2, rtol=1e-9, atol=1e-9)
            # forward mode works too (e.g. jacfwd in Gauss-Newton fits) and agrees
            dv = jnp.asarray(r.normal(size=v.shape))
            _, jv = jax.jvp(lambda s, w_=w: loss(barycentric_from_ids, s, w_), (vv,), (dv,))
            np.testing.assert_allclose(jv, jnp.sum(got[0] * dv), rtol=1e-9)


def test_ids_identical_for_any_tile_chunk_and_division_path(monkeypatch, data_dir):
    # every (tile, chunk) split and both ways of locating a tile in its box evaluate the same
    # float32 fragments, so the z-buffer must agree bit for bit (ICT face region at 128^2, and a
    # random mesh with off-screen and overlapping triangles)
    d = np.load(data_dir / "ict-facekit" / "ict_face_model_light.npz")
    f = d["triangles"].astype(np.int32)
    f = f[(f <= 11247).all(axis=1)]
    v = fit_to_image(d["neutral"][:11248], (128, 128))
    rv, rf = random_mesh(np.random.default_rng(7), n_faces=60)
    for verts, faces, size in ((v, f, (128, 128)), (rv, rf, (40, 56))):
        ids0 = np.asarray(rasterize(verts, faces, size).triangle_id)
        assert (ids0 >= 0).sum() > 500
        # chunk 20000 (tail chunks of 5572 tiles, F/4, for the face): with tile 1 (28,575 face
        # tiles) one full chunk then two tail chunks; with tile 3 (12,645) tail chunks only
        for tile, chunk in [(1, None), (3, None), (2, 1000), (2, 37), (1, 20000), (3, 20000)]:
            ids = rasterize(verts, faces, size, tile=tile, fragment_chunk=chunk).triangle_id
            np.testing.assert_array_equal(np.asarray(ids), ids0)
        # the batched path (one z-buffer after the other) with tail chunks
        ids = rasterize(np.stack([verts, verts]), faces, size, tile=1,
                        fragment_chunk=20000).triangle_id
        np.testing.assert_array_equal(np.asarray(ids), np.stack([ids0, ids0]))
        monkeypatch.setattr(rast_mod, "_FLOAT_DIV_TILES", 0)  # int32 // and % instead
        rast_mod._rasterize_single.clear_cache()
        for tile in (2, 3):
            ids = rasterize(verts, faces, size, tile=tile, fragment_chunk=777).triangle_id
            np.testing.assert_array_equal(np.asarray(ids), ids0)
        monkeypatch.undo()
        rast_mod._rasterize_single.clear_cache()


def test_no_triangles_gives_background():
    v = np.random.default_rng(0).uniform(0, 8, (5, 3)).astype(np.float32)
    f = np.zeros((0, 3), np.int32)
    fr = rasterize(v, f, (8, 8))
    np.testing.assert_array_equal(np.asarray(fr.triangle_id), -1)
    np.testing.assert_array_equal(np.asarray(fr.barycentric), 0.0)
    assert np.isinf(np.asarray(fr.depth)).all()
    g = jax.grad(lambda x: jnp.sum(rasterize(x, f, (8, 8)).barycentric))(jnp.asarray(v))
    np.testing.assert_array_equal(np.asarray(g), 0.0)


@pytest.mark.parametrize("perspective", [False, True])
def test_batched_gradients_and_jvp_match_per_image(rng, perspective):
    """The batched path (lax.map with each image's barycentrics recomputed in the backward
    from its saved triangle ids) gives the per-image values, gradients and JVPs."""
    meshes = [random_mesh(np.random.default_rng(10 + s), n_faces=40) for s in range(3)]
    f = jnp.asarray(meshes[0][1])
    vb = jnp.asarray(np.stack([m[0] for m in meshes]))
    wb = 1.0 + 0.1 * vb[..., 2] if perspective else None
    weights = jnp.asarray(rng.normal(size=(40, 56, 3)).astype(np.float32))

    def loss(v, w):  # (V, 3) or batched (B, V, 3) vertices
        fr = rasterize(v, f, (40, 56), w)
        d = jnp.where(fr.triangle_id >= 0, fr.depth, 0.0)
        return jnp.sum(fr.barycentric * weights) + 0.1 * jnp.sum(d)

    argnums = (0, 1) if perspective else 0
    gb = jax.jit(jax.grad(loss, argnums))(vb, wb)
    gb = gb if perspective else (gb,)
    dv = jnp.asarray(rng.normal(size=vb.shape).astype(np.float32))
    jb = jax.jvp(lambda v: loss(v, wb), (vb,), (dv,))[1]
    j1 = 0.0
    for b in range(3):
        w1 = None if wb is None else wb[b]
        g1 = jax.grad(loss, argnums)(vb[b], w1)
        g1 = g1 if perspective else (g1,)
        for got, want in zip(gb, g1, strict=True):
            np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)
        j1 += jax.jvp(lambda v, w1=w1: loss(v, w1), (vb[b],), (dv[b],))[1]
    np.testing.assert_allclose(jb, j1, rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(gb[0]).sum()) > 0


def test_integer_sums_are_exact_and_need_no_matmul(rng):
    # the tile stream's offsets and owners are cumulative sums of integer counts: exact int32
    # additions (an earlier float32 matmul form was exact only in full float32, which NVIDIA
    # GPUs do not use by default), so the rasterisers contain no dot product at all
    from jaxface.render import soft_rasterize
    from jaxface.render.rasterize import _cumsum

    for n, hi in ((0, 9), (1, 9), (32, 2**24), (33, 2**24), (1000, 2**20), (37_633, 2**15)):
        x = rng.integers(0, hi, n).astype(np.int32)
        got = np.asarray(jax.jit(_cumsum)(jnp.asarray(x)))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, np.cumsum(x.astype(np.int64)))
    xf = rng.uniform(0, 3, 5000).astype(np.float32)
    np.testing.assert_allclose(_cumsum(jnp.asarray(xf)), np.cumsum(xf.astype(np.float64)),
                               rtol=1e-5)

    v = jnp.asarray(rng.uniform(0, 40, (30, 3)).astype(np.float32))
    f = jnp.asarray(rng.integers(0, 30, (20, 3)).astype(np.int32))
    for fn in (lambda x: rasterize(x, f, (40, 40)).barycentric,
               lambda x: rasterize(x[None], f, (40, 40)).barycentric,
               lambda x: soft_rasterize(x, f, (40, 40), sigma=0.5).barycentric):
        assert dot_precisions(fn, v) == []
