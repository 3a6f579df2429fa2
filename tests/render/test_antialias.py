"""antialias(): topology, exact visibility, coverage, silhouette gradients vs finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxface.render import antialias, edge_neighbors, rasterize

F1 = np.array([[0, 1, 2]], np.int32)
FG = jnp.array([1.0, 0.5, 0.2])
BG = jnp.array([0.0, 0.1, 0.3])


@jax.jit
def _render_jit(v):
    return _render(v)


def _render(v, f=F1, size=(32, 32)):
    fr = rasterize(v, f, size)
    col = jnp.where(fr.mask[..., None], FG, BG)
    return antialias(col, fr, v, f), fr, col


def test_edge_neighbors():
    f = np.array([[0, 1, 2], [2, 1, 3], [3, 4, 2]], np.int32)
    nb = edge_neighbors(f)
    # triangle 0: edge opposite vertex 0 is (1, 2), shared with triangle 1
    np.testing.assert_array_equal(nb[0], [1, -1, -1])
    np.testing.assert_array_equal(nb[1], [-1, 2, 0])  # edge (1, 3) is a boundary
    assert nb[2].tolist().count(1) == 1


def test_only_silhouette_pixels_change_and_coverage_matches_area():
    v = jnp.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0]])
    out, fr, col = _render_jit(v)
    changed = np.any(np.abs(np.asarray(out - col)) > 0, axis=-1)
    mask = np.asarray(fr.mask)
    # changed pixels are next to the silhouette: a 4-neighbour has the other visibility
    pad = np.pad(mask, 1, mode="edge")
    boundary = ((pad[:-2, 1:-1] != mask) | (pad[2:, 1:-1] != mask)
                | (pad[1:-1, :-2] != mask) | (pad[1:-1, 2:] != mask))
    assert changed.any() and not (changed & ~boundary).any()
    # the foreground fraction approximates the analytic triangle area better than the count
    frac = (np.asarray(out)[..., 0] - 0.0) / 1.0
    area = 0.5 * abs((27.2 - 4.3) * (26.4 - 3.7) - (11.6 - 4.3) * (9.1 - 3.7))
    assert abs(frac.sum() - area) < 2.0
    # visibility is untouched
    np.testing.assert_array_equal(rasterize(v, F1, (32, 32)).triangle_id, fr.triangle_id)


def test_interior_edges_of_a_flat_mesh_are_not_blended():
    v = jnp.array([[3.0, 3.0, 1.0], [29.0, 3.0, 1.0], [29.0, 29.0, 1.0], [3.0, 29.0, 1.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    fr = rasterize(v, f, (32, 32))
    col = jnp.where((fr.triangle_id == 0)[..., None], FG, jnp.where(fr.mask[..., None], 0.5, BG))
    out = antialias(col, fr, v, f)
    ids = np.asarray(fr.triangle_id)
    diag = (ids == 0) | (ids == 1)
    interior = diag.copy()
    interior[:5], interior[-5:], interior[:, :5], interior[:, -5:] = False, False, False, False
    np.testing.assert_array_equal(np.asarray(out)[interior], np.asarray(col)[interior])


def test_silhouette_gradients_match_finite_differences():
    with jax.enable_x64(True):
        v = jnp.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0],
                       [18.3, 12.2, 0.5], [30.7, 20.1, 0.5], [20.4, 30.6, 0.5]])
        f = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
        nb = edge_neighbors(f)
        cols = jnp.array([[1.0, 0.5, 0.2], [0.2, 0.9, 0.4]])

        @jax.jit
        def loss(v):
            fr = rasterize(v, f, (32, 32))
            c = jnp.where(fr.mask[..., None], cols[jnp.maximum(fr.triangle_id, 0)], BG)
            im = antialias(c, fr, v, f, neighbors=nb)
            return jnp.sum(im * jnp.cos(jnp.arange(im.size)).reshape(im.shape))

        g = jax.grad(loss)(v)
        eps = 1e-5
        for idx in [(0, 0), (0, 1), (1, 0), (2, 1), (3, 0), (4, 1), (5, 0)]:
            dv = jnp.zeros_like(v).at[idx].set(eps)
            fd = (loss(v + dv) - loss(v - dv)) / (2 * eps)
            np.testing.assert_allclose(g[idx], fd, rtol=1e-4, atol=1e-6)
            assert abs(float(g[idx])) > 1e-3


def test_batched_and_no_nan_for_degenerate():
    v = jnp.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0]])
    vb = jnp.stack([v, v + jnp.array([2.0, 1.0, 0.0])])
    fr = rasterize(vb, F1, (32, 32))
    col = jnp.where(fr.mask[..., None], FG, BG)
    out = antialias(col, fr, vb, F1)
    np.testing.assert_allclose(out[1], _render_jit(vb[1])[0], atol=1e-6)
    vd = jnp.array([[5.0, 5.0, 1.0], [5.0, 5.0, 1.0], [5.0, 5.0, 1.0]])  # zero-area / empty
    grad = jax.jit(jax.grad(lambda v: jnp.sum(_render(v)[0])))
    assert np.isfinite(np.asarray(grad(vd))).all()
    vb2 = jnp.array([[0.0, 0.0, 1.0], [32.0, 0.0, 1.0], [0.0, 32.0, 1.0]])  # on the border
    assert np.isfinite(np.asarray(grad(vb2))).all()


def _subdivided(corners: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A triangle cut into ``n**2`` congruent triangles (a barycentric grid)."""
    index, pts = {}, []
    for i in range(n + 1):
        for j in range(n + 1 - i):
            index[i, j] = len(pts)
            pts.append(corners[0] * (1 - (i + j) / n) + corners[1] * i / n + corners[2] * j / n)
    tris = []
    for i in range(n):
        for j in range(n - i):
            tris.append([index[i, j], index[i + 1, j], index[i, j + 1]])
            if i + j < n - 1:
                tris.append([index[i + 1, j], index[i + 1, j + 1], index[i, j + 1]])
    return np.asarray(pts, np.float32), np.asarray(tris, np.int32)


def test_sub_pixel_triangles_antialias_like_one_big_triangle():
    # the silhouette of a mesh of triangles much smaller than a pixel (0.06 px² here) is found
    # as well as that of one big triangle: a boundary triangle whose edge crosses a pixel pair
    # often covers neither pixel centre, so a search among the covering triangles' edges (as
    # nvdiffrast's) misses most of them
    corners = np.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0]], np.float32)
    one = _render_jit(jnp.asarray(corners))[0]
    v, f = _subdivided(corners, 64)
    assert f.shape[0] == 4096
    fr = rasterize(jnp.asarray(v), f, (32, 32))
    col = jnp.where(fr.mask[..., None], FG, BG)
    many = antialias(col, fr, jnp.asarray(v), f)
    np.testing.assert_allclose(many, one, atol=2e-5)
    assert np.abs(np.asarray(one - col)).max() > 0.1


def test_crossing_stream_split_into_groups_gives_the_same_image(monkeypatch):
    import importlib

    aa = importlib.import_module("jaxface.render.antialias")
    corners = np.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0]], np.float32)
    v, f = _subdivided(corners, 8)
    fr = rasterize(jnp.asarray(v), f, (32, 32))
    col = jnp.where(fr.mask[..., None], FG, BG)
    ref = antialias(col, fr, jnp.asarray(v), f)
    # streams of at most 10 edges (each crosses at most H + W = 64 lines) after the chunk
    monkeypatch.setattr(aa, "_MAX_STREAM", 2048 + 10 * 64)
    split = antialias(col, fr, jnp.asarray(v), f)
    np.testing.assert_array_equal(split, ref)


def test_dense_face_silhouette_matches_supersampled_coverage(data_dir):
    # ICT face at 64² and 96² (triangles about 0.1-0.2 px²): the antialiased coverage of
    # silhouette pixels against an 8x8 supersampled render
    from jaxface.render.reference import fit_to_image

    d = np.load(data_dir / "ict-facekit" / "ict_face_model_light.npz")
    f = d["triangles"].astype(np.int32)
    f = f[(f <= 11247).all(axis=1)]
    v = d["neutral"].astype(np.float32)[:11248]
    nb = edge_neighbors(f)
    for s in (64, 96):
        sv = jnp.asarray(fit_to_image(v, (s, s)))
        fr = rasterize(sv, f, (s, s))
        hard = fr.mask.astype(jnp.float32)
        out = np.asarray(antialias(hard[..., None], fr, sv, f, neighbors=nb))[..., 0]
        k = 8
        fine = rasterize(sv * jnp.array([k, k, 1.0]), f, (s * k, s * k)).mask
        ref = np.asarray(fine, np.float32).reshape(s, k, s, k).mean(axis=(1, 3))
        sil = np.abs(ref - np.asarray(hard)) > 1e-3
        err_hard = np.abs(np.asarray(hard) - ref)[sil].mean()
        err_aa = np.abs(out - ref)[sil].mean()
        assert err_aa < 0.5 * err_hard, (s, err_aa, err_hard)
        # nearly every pixel pair across the outline is blended
        m = np.asarray(fr.mask)
        changed = np.abs(out - np.asarray(hard)) > 0
        pairs_v = m[1:] != m[:-1]
        pairs_h = m[:, 1:] != m[:, :-1]
        hit = np.concatenate([(changed[1:] | changed[:-1])[pairs_v],
                              (changed[:, 1:] | changed[:, :-1])[pairs_h]])
        assert hit.mean() > 0.9, (s, hit.mean())


def test_sub_pixel_silhouette_gradients_match_finite_differences():
    # edges of boundary triangles that cover no pixel centre still give gradients
    with jax.enable_x64(True):
        corners = np.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0]])
        v, f = _subdivided(corners, 32)
        v = jnp.asarray(v, jnp.float64)
        nb = edge_neighbors(f)

        @jax.jit
        def loss(v):
            fr = rasterize(v, f, (32, 32))
            c = jnp.where(fr.mask[..., None], FG, BG)
            im = antialias(c, fr, v, f, neighbors=nb)
            return jnp.sum(im * jnp.cos(jnp.arange(im.size)).reshape(im.shape))

        g = jax.grad(loss)(v)
        # boundary vertices: the corners and points along the three sides
        n = 32
        side = [0] + [sum(n + 1 - r for r in range(i)) for i in (8, 16, 24)] + [5, 13, 27]
        checked = 0
        for vi in side:
            for c in (0, 1):
                dv = jnp.zeros_like(v).at[vi, c].set(1e-5)
                fd = (loss(v + dv) - loss(v - dv)) / 2e-5
                np.testing.assert_allclose(g[vi, c], fd, rtol=1e-4, atol=1e-6)
                checked += abs(float(g[vi, c])) > 1e-3
        assert checked >= 8


def test_own_index_as_neighbour_marks_an_edge_that_is_never_a_silhouette():
    v = jnp.array([[4.3, 3.7, 1.0], [27.2, 9.1, 1.0], [11.6, 26.4, 1.0]])
    fr = rasterize(v, F1, (32, 32))
    col = jnp.where(fr.mask[..., None], FG, BG)
    nb = np.array([[0, -1, 0]], np.int32)  # only edge 1 (vertices 2 -> 0) stays a boundary
    out = np.asarray(antialias(col, fr, v, F1, neighbors=nb))
    changed = np.abs(out - np.asarray(col)).max(axis=-1) > 0
    full = np.abs(np.asarray(_render_jit(v)[0] - col)).max(axis=-1) > 0
    assert changed.any() and changed.sum() < full.sum()
    # every changed pixel pair straddles edge 1 (the line through vertices 2 and 0)
    x, y = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5)
    (x0, y0), (x2, y2) = np.asarray(v[0, :2]), np.asarray(v[2, :2])
    dist = np.abs((x0 - x2) * (y - y2) - (y0 - y2) * (x - x2)) / np.hypot(x0 - x2, y0 - y2)
    assert dist[changed].max() < 1.5
    nb_none = np.array([[0, 0, 0]], np.int32)
    np.testing.assert_array_equal(antialias(col, fr, v, F1, neighbors=nb_none), col)
