"""Soft rasterisation: radius rule, K selection and overflow, convergence, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.render import (
    interpolate,
    rasterize,
    soft_blend,
    soft_interpolate,
    soft_radius,
    soft_rasterize,
)

V = np.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0], [20.0, 20.0, 0.5],
              [30.0, 28.0, 0.5], [15.0, 30.0, 0.5]])
F = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
COL = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]])


def soft_image(v, sigma, gamma, k=4, radius=None):
    sf = soft_rasterize(v, F, (32, 32), sigma=sigma, faces_per_pixel=k, radius=radius)
    c = soft_interpolate(jnp.asarray(COL, v.dtype), sf, F)
    return soft_blend(c, sf, sigma=sigma, gamma=gamma, znear=0.1, zfar=10.0), sf


def test_radius_rule():
    r = soft_radius(0.3, 1e-4)
    assert float(jax.nn.sigmoid(-(r * r) / 0.3)) == pytest.approx(1e-4, rel=1e-6)
    with pytest.raises(ValueError):
        soft_radius(0.0)


def test_converges_to_hard_render():
    v = jnp.asarray(V, jnp.float32)
    fr = rasterize(v, F, (32, 32))
    hard = np.asarray(interpolate(jnp.asarray(COL, jnp.float32), fr, F))
    errs = []
    for s in (1.0, 1e-2, 1e-5):
        im, _ = soft_image(v, s, s)
        errs.append(float(np.abs(np.asarray(im[..., :3]) - hard).mean()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-4
    im, _ = soft_image(v, 1e-5, 1e-5)
    np.testing.assert_allclose(np.asarray(im[..., 3]), np.asarray(fr.mask), atol=1e-3)


def test_nearest_first_matches_hard_ids_and_reports_overflow():
    v = jnp.asarray(V, jnp.float32)
    _, sf = soft_image(v, 1e-4, 1e-4, k=2)
    hard = np.asarray(rasterize(v, F, (32, 32)).triangle_id)
    ids = np.asarray(sf.triangle_id)
    assert ids.shape == (32, 32, 2)
    np.testing.assert_array_equal(ids[..., 0][hard >= 0], hard[hard >= 0])
    assert int(np.asarray(sf.overflow).sum()) == 0
    # 5 stacked copies of a triangle with K=2: 3 per covered pixel must be reported
    f5 = np.repeat(F[:1], 5, axis=0)
    sf5 = soft_rasterize(v, f5, (32, 32), sigma=1e-4, faces_per_pixel=2)
    cov = np.asarray(sf5.triangle_id[..., 0]) >= 0
    assert cov.sum() > 100
    np.testing.assert_array_equal(np.asarray(sf5.overflow)[cov], 3)
    assert (np.asarray(sf5.triangle_id)[cov] == np.array([0, 1])).all()


def test_gradients_match_finite_differences_and_reach_outside_pixels():
    with jax.enable_x64(True):
        v = jnp.asarray(V, jnp.float64)
        w = jnp.cos(jnp.arange(32 * 32 * 4)).reshape(32, 32, 4)

        @jax.jit
        def loss(v, w):
            im, _ = soft_image(v, 0.5, 0.05)
            return jnp.sum(im * w)

        grad = jax.jit(jax.grad(loss))
        g = grad(v, w)
        eps = 1e-5
        for idx in [(0, 0), (1, 1), (3, 0), (4, 1), (2, 1)]:
            dv = jnp.zeros_like(v).at[idx].set(eps)
            fd = (loss(v + dv, w) - loss(v - dv, w)) / (2 * eps)
            np.testing.assert_allclose(g[idx], fd, rtol=1e-5, atol=1e-7)

        # a pixel outside the silhouette (1.5 px left of vertex 0) still pulls vertex 0:
        # the gradient of its alpha w.r.t. vertex 0's x
        assert np.asarray(rasterize(v, F, (32, 32)).triangle_id)[4, 2] == -1
        go = grad(v, jnp.zeros_like(w).at[4, 2, 3].set(1.0))
        assert float(go[0, 0]) < 0  # moving vertex 0 left increases the coverage there
        assert np.isfinite(np.asarray(go)).all()


def test_no_nan_gradients_degenerate_and_empty():
    vd = jnp.array([[5.0, 5.0, 1.0], [5.0, 5.0, 1.0], [5.0, 5.0, 1.0],
                    [-50.0, -50.0, 1.0], [-40.0, -50.0, 1.0], [-50.0, -40.0, 1.0]])

    def loss(v):
        im, _ = soft_image(v, 0.5, 0.05)
        return jnp.sum(im)

    assert np.isfinite(np.asarray(jax.grad(loss)(vd))).all()


def test_no_triangles_gives_background():
    """A mesh with no faces (e.g. an empty region) is all background, batched or not, with
    zero gradients."""
    v = jnp.asarray(np.random.default_rng(0).uniform(0, 8, (5, 3)).astype(np.float32))
    f = np.zeros((0, 3), np.int32)

    def loss(x):
        sf = soft_rasterize(x, f, (8, 8), sigma=0.5, faces_per_pixel=3)
        im = soft_blend(soft_interpolate(jnp.ones((5, 3)), sf, f), sf, sigma=0.5, gamma=0.05,
                        znear=-10.0, zfar=10.0)
        return jnp.sum(im), sf

    (total, sf), g = jax.value_and_grad(loss, has_aux=True)(v)
    np.testing.assert_array_equal(np.asarray(sf.triangle_id), -1)
    np.testing.assert_array_equal(np.asarray(sf.overflow), 0)
    assert np.isinf(np.asarray(sf.dist)).all() and np.isfinite(float(total))
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    sb = soft_rasterize(jnp.stack([v, v]), f, (8, 8), sigma=0.5, faces_per_pixel=3)
    assert sb.triangle_id.shape == (2, 8, 8, 3)


def test_batched():
    v = jnp.asarray(V, jnp.float32)
    vb = jnp.stack([v, v + jnp.array([1.0, 2.0, 0.0])])
    sf = soft_rasterize(vb, F, (32, 32), sigma=0.2, faces_per_pixel=3)
    one = soft_rasterize(vb[1], F, (32, 32), sigma=0.2, faces_per_pixel=3)
    np.testing.assert_array_equal(sf.triangle_id[1], one.triangle_id)
    np.testing.assert_allclose(sf.dist[1], one.dist, atol=1e-5)


def test_perspective_correct_barycentrics_with_w():
    """A triangle receding in depth (z 300 -> 900 mm) under a pinhole camera: with the clip
    w, the nearest slot's barycentrics and depth equal the hard rasteriser's perspective-
    correct ones inside the triangle, and interpolating camera-frame points gives the points
    the pixel rays hit (an independent check: ray-plane intersection)."""
    from jaxface.camera import PerspectiveCamera, to_screen

    cam = PerspectiveCamera(fx=60.0, fy=60.0, cx=32.0, cy=32.0)
    pts = jnp.array([[-150.0, -100.0, 300.0], [400.0, -120.0, 900.0], [-100.0, 250.0, 500.0]])
    tri = np.array([[0, 1, 2]], np.int32)
    scr = to_screen(cam, pts)
    soft = soft_rasterize(scr.xyz, tri, (64, 64), sigma=1e-4, faces_per_pixel=1, w=scr.w)
    flat = soft_rasterize(scr.xyz, tri, (64, 64), sigma=1e-4, faces_per_pixel=1)
    hard = rasterize(scr.xyz, tri, (64, 64), w=scr.w)
    inside = np.asarray(hard.triangle_id >= 0)
    assert inside.sum() > 300
    np.testing.assert_allclose(np.asarray(soft.barycentric[..., 0, :])[inside],
                               np.asarray(hard.barycentric)[inside], atol=1e-5)
    np.testing.assert_allclose(np.asarray(soft.depth[..., 0])[inside],
                               np.asarray(hard.depth)[inside], rtol=1e-5)
    # interpolated camera-frame points lie on the pixel rays (x/z, y/z = pixel direction)
    p3 = np.asarray(soft_interpolate(pts, soft, tri))[:, :, 0][inside]
    v, u = np.nonzero(inside)
    np.testing.assert_allclose(p3[:, 0] / p3[:, 2], (u + 0.5 - 32.0) / 60.0, atol=1e-4)
    np.testing.assert_allclose(p3[:, 1] / p3[:, 2], (v + 0.5 - 32.0) / 60.0, atol=1e-4)
    # without w the screen-space barycentrics are off by a lot on this receding triangle
    assert np.abs(np.asarray(flat.barycentric[..., 0, :])[inside]
                  - np.asarray(hard.barycentric)[inside]).max() > 0.05
    # batched w
    sb = soft_rasterize(jnp.stack([scr.xyz] * 2), tri, (64, 64), sigma=1e-4, faces_per_pixel=1,
                        w=jnp.stack([scr.w] * 2))
    np.testing.assert_allclose(sb.barycentric[1], soft.barycentric, atol=1e-6)


def test_point_triangle_jvp_matches_autodiff_and_finite_differences():
    """The hand-written JVP of the per-slot geometry (signed squared distance and clipped
    barycentrics) against plain autodiff of the same arithmetic and against central
    differences, in float64, for pixels inside, near edges and in the corner regions of random
    triangles (both windings); degenerate triangles get finite (zero) tangents."""
    from jaxface.render.soft import _point_tri_math, _point_tri_planes

    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        n = 400
        corners = rng.uniform(0, 10, (6, n))
        # pixels at barycentric coordinates that are all positive (inside) or not (outside:
        # edge and corner regions)
        lam = rng.uniform(-0.6, 1.0, (3, n))
        lam = lam / lam.sum(0)
        px, py = (lam * corners[0::2]).sum(0), (lam * corners[1::2]).sum(0)
        tangents = rng.normal(size=(6, n))

        def planes(c):
            dist, b0, b1, b2 = _point_tri_planes(*c, px, py)
            return jnp.stack([dist, b0, b1, b2])

        def planes_ad(c):
            dist, b, _ = _point_tri_math(list(c[0::2]), list(c[1::2]), px, py)
            return jnp.stack([dist, *b])

        c = tuple(jnp.asarray(a) for a in corners)
        t = tuple(jnp.asarray(a) for a in tangents)
        out, jvp = jax.jvp(planes, (c,), (t,))
        out_ad, jvp_ad = jax.jvp(planes_ad, (c,), (t,))
        np.testing.assert_array_equal(np.asarray(out), np.asarray(out_ad))
        np.testing.assert_allclose(np.asarray(jvp), np.asarray(jvp_ad), rtol=1e-9, atol=1e-9)
        eps = 1e-6
        hi = planes(tuple(a + eps * d for a, d in zip(c, t, strict=True)))
        lo = planes(tuple(a - eps * d for a, d in zip(c, t, strict=True)))
        np.testing.assert_allclose(np.asarray(jvp), np.asarray(hi - lo) / (2 * eps),
                                   rtol=1e-5, atol=1e-5)
        inside = np.asarray(out[0]) < 0
        assert 50 < inside.sum() < n - 50  # both cases well represented
        # reverse mode is the transpose of the same JVP
        ct = jnp.asarray(rng.normal(size=(4, n)))
        g = jax.grad(lambda c: jnp.sum(planes(c) * ct))(c)
        g_ad = jax.grad(lambda c: jnp.sum(planes_ad(c) * ct))(c)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ad), rtol=1e-9, atol=1e-9)
        # degenerate (zero-area) triangles: finite, zero barycentric tangents
        deg = (c[0], c[1], c[0], c[1], c[0] + 1.0, c[1] + 1.0)  # collinear corners
        _, jd = jax.jvp(planes, (deg,), (t,))
        assert np.isfinite(np.asarray(jd)).all()
        np.testing.assert_array_equal(np.asarray(jd[1:]), 0.0)


def test_selection_independent_of_chunking():
    """The K nearest faces and the overflow counts do not depend on how the candidate stream
    is cut into chunks (one chunk, or many, where later chunks are filtered against the
    running K nearest), nor on the tile size; checked against a per-pixel NumPy selection."""
    rng = np.random.default_rng(7)
    nv, size = 90, (24, 20)
    v = np.concatenate([rng.uniform(-2, 22, (nv, 2)), rng.uniform(0, 5, (nv, 1))], 1)
    f = rng.integers(0, nv, (60, 3)).astype(np.int32)
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
    v = jnp.asarray(v, jnp.float32)
    outs = [soft_rasterize(v, f, size, sigma=0.5, faces_per_pixel=3, fragment_chunk=c, tile=t)
            for c, t in ((None, 2), (37, 2), (5, 1), (11, 3))]
    for o in outs[1:]:
        np.testing.assert_array_equal(np.asarray(o.triangle_id), np.asarray(outs[0].triangle_id))
        np.testing.assert_array_equal(np.asarray(o.overflow), np.asarray(outs[0].overflow))
    ids, over = np.asarray(outs[0].triangle_id), np.asarray(outs[0].overflow)
    # reference (float64 NumPy): every face within the radius of each pixel centre, ordered by
    # the depth at its clipped barycentrics, then by id
    r2 = soft_radius(0.5) ** 2
    vn = np.asarray(v, np.float64)
    checked = 0
    for i in range(size[0]):
        for j in range(size[1]):
            p = np.array([j + 0.5, i + 0.5])
            sel = []
            for t, (a, b, c) in enumerate(f):
                x = vn[[a, b, c], :2]
                ab = [(x[(k + 2) % 3] - x[(k + 1) % 3], p - x[(k + 1) % 3]) for k in range(3)]
                e = [u[0] * q[1] - u[1] * q[0] for u, q in ab]
                area = sum(e)
                if area == 0:
                    continue
                w = np.maximum(np.array(e) * np.sign(area), 0.0)
                inside = (w == np.array(e) * np.sign(area)).all()
                d2 = min(np.sum((p - (x[k] + np.clip(np.dot(p - x[k], x[m] - x[k])
                                                     / np.dot(x[m] - x[k], x[m] - x[k]),
                                                     0, 1) * (x[m] - x[k]))) ** 2)
                         for k, m in ((1, 2), (2, 0), (0, 1)))
                if inside or d2 <= r2:
                    sel.append((float(w @ vn[[a, b, c], 2] / w.sum()), t, d2))
            sel.sort()
            # near the radius or in depth near-ties float32 may decide the other way
            if any(abs(d2 - r2) < 1e-3 for *_, d2 in sel) or any(
                    abs(sel[k + 1][0] - sel[k][0]) < 1e-4 for k in range(len(sel) - 1)):
                continue
            want = [t for _, t, _ in sel[:3]] + [-1] * (3 - min(3, len(sel)))
            assert list(ids[i, j]) == want, (i, j)
            assert over[i, j] == max(len(sel) - 3, 0), (i, j)
            checked += 1
    assert checked > 0.8 * size[0] * size[1]
    assert (over > 0).sum() > 20  # overflowing pixels are exercised
