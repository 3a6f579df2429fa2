"""Tests of the MorphableModel core (jaxface/models/morphable.py) on tiny hand-built models."""

from __future__ import annotations

import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.errors import ModelFormatError
from jaxface.models import (
    ContourSet,
    LandmarkSet,
    landmarks,
    load_npz,
    make_model,
    random_coefficients,
    restrict,
    save_npz,
    standardized,
    truncate,
    vertices,
)


def tiny_model(rng: np.random.Generator, v: int = 7, ks: int = 4, ke: int = 3,
               kind: str = "pca"):
    """A random model on a triangle fan around vertex 0 (v - 2 triangles)."""
    mean = rng.normal(size=(v, 3)) * 50.0
    tris = np.array([[0, k, k + 1] for k in range(1, v - 1)], np.int32)
    lm = LandmarkSet.from_vertex_ids([1, 3, 5])
    return make_model(
        mean=mean, identity_basis=rng.normal(size=(ks, v, 3)),
        identity_std=rng.uniform(0.5, 2.0, ks),
        expression_basis=rng.normal(size=(ke, v, 3)),
        expression_std=None if kind == "blendshape" else rng.uniform(0.5, 2.0, ke),
        expression_kind=kind, expression_names=[f"e{i}" for i in range(ke)],
        triangles=tris, uv=rng.uniform(size=(v, 2)), uv_triangles=tris,
        landmarks={"pts": lm},
        contours={"pts": ContourSet(np.array([0, 2], np.int32),
                                    np.array([[1, 2, -1], [5, 6, 4]], np.int32))},
        regions={"left": np.arange(v) < v // 2}, name="tiny")


def np_vertices(m, a=None, e=None):
    out = np.asarray(m.mean, np.float64).copy()
    if a is not None:
        a = np.asarray(a, np.float64)
        out += np.tensordot(a, np.asarray(m.identity_basis, np.float64)[:a.shape[0]], 1)
    if e is not None:
        out += np.tensordot(np.asarray(e, np.float64), np.asarray(m.expression_basis, np.float64),
                            1)
    return out


# ------------------------------------------------------------------------------------------------
# vertices / landmarks
# ------------------------------------------------------------------------------------------------

def test_vertices_eager_jit_vmap_match_numpy(rng):
    m = tiny_model(rng)
    a, e = rng.normal(size=m.n_identity), rng.normal(size=m.n_expression)
    ref = np_vertices(m, a, e)
    np.testing.assert_allclose(vertices(m, a, e), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(jax.jit(vertices)(m, a, e), ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(vertices(m), np.asarray(m.mean), atol=0)
    np.testing.assert_allclose(vertices(m, a), np_vertices(m, a), rtol=1e-5, atol=1e-4)
    # fewer coefficients: the leading modes
    np.testing.assert_allclose(vertices(m, a[:2]), np_vertices(m, a[:2]), rtol=1e-5, atol=1e-4)
    A, E = rng.normal(size=(5, m.n_identity)), rng.normal(size=(5, m.n_expression))
    batched = jax.jit(jax.vmap(vertices, in_axes=(None, 0, 0)))(m, A, E)
    assert batched.shape == (5, m.n_vertices, 3)
    for i in range(5):
        np.testing.assert_allclose(batched[i], np_vertices(m, A[i], E[i]), rtol=1e-5, atol=1e-4)


def test_vertices_grad_matches_analytic_and_finite_differences(rng):
    m = tiny_model(rng)
    w = rng.normal(size=(m.n_vertices, 3))
    a0, e0 = rng.normal(size=m.n_identity), rng.normal(size=m.n_expression)

    def f(a, e):
        return jnp.sum(w * vertices(m, a, e) ** 2)

    ga, ge = jax.jit(jax.grad(f, argnums=(0, 1)))(a0, e0)
    v = np_vertices(m, a0, e0)
    ref_a = np.einsum("kvc,vc->k", np.asarray(m.identity_basis, np.float64), 2 * w * v)
    ref_e = np.einsum("kvc,vc->k", np.asarray(m.expression_basis, np.float64), 2 * w * v)
    np.testing.assert_allclose(ga, ref_a, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(ge, ref_e, rtol=1e-4, atol=1e-2)

    def f64(a, e):
        return float(np.sum(w * np_vertices(m, a, e) ** 2))

    h = 1e-4
    for k in range(m.n_identity):
        d = np.zeros(m.n_identity)
        d[k] = h
        fd = (f64(a0 + d, e0) - f64(a0 - d, e0)) / (2 * h)
        np.testing.assert_allclose(ga[k], fd, rtol=1e-4, atol=1e-2)


def test_vertices_bad_coefficients(rng):
    m = tiny_model(rng)
    with pytest.raises(ValueError, match="1-D"):
        vertices(m, np.zeros((2, m.n_identity)))
    with pytest.raises(ValueError, match="coefficients for a basis"):
        vertices(m, np.zeros(m.n_identity + 1))
    no_expr = make_model(mean=m.mean, identity_basis=m.identity_basis, triangles=m.triangles)
    with pytest.raises(ValueError, match="no expression basis"):
        vertices(no_expr, None, np.zeros(2))


def test_landmarks_vertex_ids_and_barycentric(rng):
    m = tiny_model(rng)
    verts = rng.normal(size=(2, 3, m.n_vertices, 3)).astype(np.float32)  # two batch dims
    out = jax.jit(landmarks, static_argnames="name")(m, verts, name="pts")
    assert out.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(out, verts[..., [1, 3, 5], :], atol=1e-6)

    tri = np.asarray(m.triangles)
    bary = np.array([[0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]], np.float32)
    lm = LandmarkSet.from_barycentric(tri, [1, 3], bary)
    m2 = make_model(mean=m.mean, identity_basis=m.identity_basis, triangles=tri,
                    landmarks={"b": lm})
    got = landmarks(m2, jnp.asarray(verts), "b")
    assert got.shape == (2, 3, 2, 3)
    ref = np.einsum("lk,...lkc->...lc", bary, verts[..., tri[[1, 3]], :])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # gradient of a landmark w.r.t. the vertices is the barycentric weight
    g = jax.grad(lambda v: landmarks(m2, v, "b")[0, 0])(jnp.asarray(verts[0, 0]))
    expect = np.zeros((m.n_vertices, 3))
    expect[tri[1], 0] = bary[0]
    np.testing.assert_allclose(g, expect, atol=1e-7)
    with pytest.raises(KeyError, match="no landmark set"):
        landmarks(m2, verts, "ibug68")
    with pytest.raises(ValueError, match="out of range"):
        LandmarkSet.from_barycentric(tri, [len(tri)], bary[:1])
    with pytest.raises(ValueError, match="barycentric rows"):
        LandmarkSet.from_barycentric(tri, [0, 1], bary[:1])


def test_standardized_and_random_coefficients(rng):
    m = tiny_model(rng)
    s = standardized(m)
    a, e = rng.normal(size=m.n_identity), rng.normal(size=m.n_expression)
    np.testing.assert_allclose(
        vertices(s, a, e),
        vertices(m, a * np.asarray(m.identity_std), e * np.asarray(m.expression_std)),
        rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s.identity_std, 1.0)
    b = tiny_model(rng, kind="blendshape")
    keys = jax.random.split(jax.random.PRNGKey(1), 4000)
    draw = jax.vmap(random_coefficients, in_axes=(None, 0))
    (ids, ex), (_, w) = jax.jit(lambda k: (draw(m, k), draw(b, k)))(keys)  # one compile
    assert ids.shape == (4000, m.n_identity) and ex.shape == (4000, m.n_expression)
    np.testing.assert_allclose(np.std(np.asarray(ids), 0), m.identity_std, rtol=0.08)
    np.testing.assert_allclose(np.std(np.asarray(ex), 0), m.expression_std, rtol=0.08)
    w = np.asarray(w)
    assert w.min() >= 0.0 and w.max() <= 1.0
    assert 0.10 < np.mean(w > 0) < 0.20  # sparse: ~15 % active


# ------------------------------------------------------------------------------------------------
# restrict / truncate
# ------------------------------------------------------------------------------------------------

def hand_model():
    """A 2x3 grid of vertices (ids 0..5), 4 triangles, annotated."""
    #  3---4---5
    #  | \ | \ |
    #  0---1---2
    mean = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0], [2, 1, 0]], float)
    tri = np.array([[0, 1, 3], [1, 4, 3], [1, 2, 4], [2, 5, 4]], np.int32)
    basis = np.arange(2 * 6 * 3, dtype=float).reshape(2, 6, 3)
    uvt = np.array([[10, 11, 12], [13, 14, 15], [16, 17, 18], [19, 20, 21]], np.int32)
    return make_model(
        mean=mean, identity_basis=basis, expression_basis=basis[:1] * 2, triangles=tri,
        uv=np.zeros((22, 2)), uv_triangles=uvt,
        landmarks={"ids": LandmarkSet.from_vertex_ids([4, 3]),
                   # zero-weight slot on vertex 2 (which gets dropped)
                   "bary": LandmarkSet(np.array([[3, 4, 2]]), np.array([[0.5, 0.5, 0.0]])),
                   "lost": LandmarkSet.from_vertex_ids([2])},
        contours={"ids": ContourSet(np.array([0, 1]), np.array([[2, 4, 5], [1, 2, -1]]))},
        regions={"top": np.array([0, 0, 0, 1, 1, 1], bool)}, name="hand")


def test_restrict_reindexes_everything():
    m = hand_model()
    keep = np.array([1, 1, 0, 1, 1, 0], bool)  # drop vertices 2 and 5
    with pytest.warns(UserWarning, match="'lost'"):
        r = restrict(m, keep)
    np.testing.assert_array_equal(r.mean, np.asarray(m.mean)[[0, 1, 3, 4]])
    np.testing.assert_array_equal(r.identity_basis, np.asarray(m.identity_basis)[:, [0, 1, 3, 4]])
    np.testing.assert_array_equal(r.expression_basis,
                                  np.asarray(m.expression_basis)[:, [0, 1, 3, 4]])
    # old ids 0,1,3,4 -> 0,1,2,3; the two triangles touching 2 are dropped (no orphans)
    np.testing.assert_array_equal(r.triangles, [[0, 1, 2], [1, 3, 2]])
    np.testing.assert_array_equal(r.uv_triangles, [[10, 11, 12], [13, 14, 15]])
    np.testing.assert_array_equal(r.landmarks["ids"].indices, [[3, 3, 3], [2, 2, 2]])
    np.testing.assert_array_equal(r.landmarks["bary"].indices, [[2, 3, 2]])
    np.testing.assert_allclose(r.landmarks["bary"].weights, [[0.5, 0.5, 0.0]])
    assert "lost" not in r.landmarks
    # contour candidates on dropped vertices disappear, rows are compacted, width shrinks
    np.testing.assert_array_equal(r.contours["ids"].candidates, [[3], [1]])
    np.testing.assert_array_equal(r.contours["ids"].landmark_index, [0, 1])
    np.testing.assert_array_equal(r.regions["top"], [False, False, True, True])
    # the restricted model evaluates to the restricted vertices of the original
    a = np.array([0.3, -0.7])
    np.testing.assert_allclose(vertices(r, a), np.asarray(vertices(m, a))[[0, 1, 3, 4]],
                               atol=1e-5)
    # index-list form gives the same model
    with pytest.warns(UserWarning):
        r2 = restrict(m, [0, 1, 3, 4])
    np.testing.assert_array_equal(r2.triangles, r.triangles)


def test_restrict_bad_masks():
    m = hand_model()
    with pytest.raises(ValueError, match="shape"):
        restrict(m, np.ones(5, bool))
    with pytest.raises(ValueError, match="no vertex"):
        restrict(m, np.zeros(6, bool))
    with pytest.raises(IndexError, match=r"\[0, 6\)"):
        restrict(m, [0, 6])


def test_truncate(rng):
    m = tiny_model(rng)
    t = truncate(m, 2, 1)
    assert (t.n_identity, t.n_expression) == (2, 1)
    assert t.expression_names == ("e0",)
    np.testing.assert_array_equal(t.identity_std, np.asarray(m.identity_std)[:2])
    a, e = rng.normal(size=2), rng.normal(size=1)
    np.testing.assert_allclose(vertices(t, a, e),
                               vertices(m, np.r_[a, 0, 0], np.r_[e, 0, 0]), atol=1e-4)
    assert truncate(m).n_identity == m.n_identity
    assert m.truncate(n_expression=0).n_expression == 0
    with pytest.raises(ValueError, match="cannot keep 5 identity"):
        truncate(m, 5)


# ------------------------------------------------------------------------------------------------
# npz round trip and bad input
# ------------------------------------------------------------------------------------------------

def assert_same_model(a, b, atol=0.0):
    for f in ("mean", "identity_std", "triangles", "expression_std", "uv", "uv_triangles"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    for f in ("identity_basis", "expression_basis"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=0, atol=atol, err_msg=f)
    assert sorted(a.landmarks) == sorted(b.landmarks)
    for k in a.landmarks:
        np.testing.assert_array_equal(a.landmarks[k].indices, b.landmarks[k].indices)
        np.testing.assert_array_equal(a.landmarks[k].weights, b.landmarks[k].weights)
    for k in a.contours:
        np.testing.assert_array_equal(a.contours[k].candidates, b.contours[k].candidates)
        np.testing.assert_array_equal(a.contours[k].landmark_index, b.contours[k].landmark_index)
    assert sorted(a.regions) == sorted(b.regions)
    for k in a.regions:
        np.testing.assert_array_equal(a.regions[k], b.regions[k])
    assert (a.expression_kind, a.expression_names, a.units, a.name) == \
        (b.expression_kind, b.expression_names, b.units, b.name)


@pytest.mark.parametrize("dtype,atol", [(np.float32, 0.0), (np.float16, 5e-3), (np.int16, 5e-4)])
def test_npz_round_trip(tmp_path, rng, dtype, atol):
    m = tiny_model(rng, kind="blendshape")
    p = tmp_path / "m.npz"
    save_npz(m, p, basis_dtype=dtype)
    back = load_npz(p)
    assert_same_model(m, back, atol=atol)
    assert back.identity_basis.dtype == np.float32
    if dtype is np.int16:
        with np.load(p) as z:
            assert z["identity_basis"].dtype == np.int16
            assert float(z["quantization/identity_basis"]) == pytest.approx(1e-3)


def test_int16_quantization_step_grows_for_large_bases(tmp_path, rng):
    m = tiny_model(rng)
    big = make_model(mean=m.mean, identity_basis=np.asarray(m.identity_basis) * 1000.0,
                     triangles=m.triangles)
    p = tmp_path / "big.npz"
    save_npz(big, p, basis_dtype=np.int16, basis_step=1e-3)
    step = np.abs(np.asarray(big.identity_basis)).max() / 32767
    back = load_npz(p)
    np.testing.assert_allclose(back.identity_basis, big.identity_basis, rtol=0,
                               atol=step * 0.51)
    with pytest.raises(ValueError, match="basis_dtype"):
        save_npz(m, p, basis_dtype=np.int8)
    with pytest.raises(ValueError, match="basis_step"):
        save_npz(m, p, basis_dtype=np.int16, basis_step=0.0)


def _rewrite(src, dst, **changes):
    """Copy the npz ``src`` to ``dst``, replacing (value) or deleting (None) some keys."""
    with np.load(src) as z:
        data = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    np.savez(dst, **data)


@pytest.fixture
def saved(tmp_path, rng):
    m = tiny_model(rng)
    p = tmp_path / "good.npz"
    save_npz(m, p)
    return m, p


def _bad(name, field):
    mean = np.zeros((7, 3), np.float32)
    return {
        "wrong_shape": {"mean": np.zeros((7, 2), np.float32)},
        "nan": {"identity_basis": np.full((4, 7, 3), np.nan, np.float32)},
        "inf": {"mean": np.where(np.eye(7, 3) > 0, np.inf, mean)},
        "triangle_range": {"triangles": np.array([[0, 1, 7]], np.int32),
                           "uv_triangles": np.array([[0, 1, 2]], np.int32)},
        "basis_vertices": {"identity_basis": np.zeros((4, 6, 3), np.float32)},
        "missing": {"triangles": None},
        "int_basis": {"expression_basis": np.zeros((3, 7, 3), np.int16)},
        "bad_step": {"quantization/identity_basis": np.float32(-1.0),
                     "identity_basis": np.zeros((4, 7, 3), np.int16)},
        "neg_std": {"identity_std": -np.ones(4, np.float32)},
        "bad_landmarks": {"landmarks/pts/indices": np.array([[0, 0, 9]] * 3, np.int32)},
    }[name], field


@pytest.mark.parametrize("case,field", [
    ("wrong_shape", "mean"), ("nan", "identity_basis"), ("inf", "mean"),
    ("triangle_range", "triangles"), ("basis_vertices", "identity_basis"),
    ("missing", "triangles"), ("int_basis", "expression_basis"),
    ("bad_step", "quantization/identity_basis"), ("neg_std", "identity_std"),
    ("bad_landmarks", "landmarks/pts"),
])
def test_load_npz_bad_content_names_file_and_field(saved, tmp_path, case, field):
    _, good = saved
    changes, field = _bad(case, field)
    bad = tmp_path / f"{case}.npz"
    _rewrite(good, bad, **changes)
    with pytest.raises(ModelFormatError) as ei:
        load_npz(bad)
    assert ei.value.field == field
    assert str(bad) in str(ei.value) and repr(field) in str(ei.value)


def test_load_npz_truncated_missing_and_foreign_files(saved, tmp_path):
    _, good = saved
    data = good.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="cut.npz"):
        load_npz(cut)
    with pytest.raises(ModelFormatError, match="nope.npz.*not found"):
        load_npz(tmp_path / "nope.npz")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(ModelFormatError, match="__meta__"):
        load_npz(foreign)
    meta = tmp_path / "meta.npz"
    _rewrite(good, meta, __meta__=np.asarray(json.dumps({"format": "other"})))
    with pytest.raises(ModelFormatError, match="expected 'jaxface-morphable-model'"):
        load_npz(meta)
    extra = tmp_path / "extra.npz"
    _rewrite(good, extra, bogus=np.zeros(2))
    with pytest.raises(ModelFormatError, match="bogus"):
        load_npz(extra)
    # a member whose compressed data is corrupt (zip directory intact)
    corrupt = tmp_path / "corrupt.npz"
    save_npz(tiny_model(np.random.default_rng(1)), corrupt, compressed=True)
    with zipfile.ZipFile(corrupt) as z:
        info = z.getinfo("identity_basis.npy")
    raw = bytearray(corrupt.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra or b"")
    for i in range(start + 20, start + 60):
        raw[i] ^= 0xFF
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(ModelFormatError, match="corrupt.npz"):
        load_npz(corrupt)


def test_make_model_bad_input_names_source_and_field(rng):
    m = tiny_model(rng)
    kw = dict(mean=m.mean, identity_basis=m.identity_basis, triangles=m.triangles,
              source="mem.npz")
    with pytest.raises(ModelFormatError, match=r"mem.npz: field 'identity_basis'"):
        make_model(**{**kw, "identity_basis": np.asarray(m.identity_basis)[:, :3]})
    with pytest.raises(ModelFormatError, match=r"field 'triangles'"):
        make_model(**{**kw, "triangles": np.asarray(m.triangles) - 1})
    with pytest.raises(ModelFormatError, match=r"field 'triangles'"):
        make_model(**{**kw, "triangles": np.asarray(m.triangles) + 0.5})
    with pytest.raises(ModelFormatError, match=r"field 'mean'"):
        make_model(**{**kw, "mean": np.full((7, 3), np.nan)})
    with pytest.raises(ModelFormatError, match=r"field 'expression_names'"):
        make_model(**kw, expression_basis=m.expression_basis, expression_names=["a"])
    with pytest.raises(ModelFormatError, match=r"field 'regions/r'"):
        make_model(**kw, regions={"r": np.ones(3, bool)})
    with pytest.raises(ModelFormatError, match=r"field 'contours/x'"):
        make_model(**kw, contours={"x": ContourSet(np.array([0]), np.array([[1]]))})


def test_landmark_valid_mask_round_trip_and_restrict(tmp_path):
    from jaxface.models import LandmarkSet, load_npz, make_model, restrict, save_npz

    rng = np.random.default_rng(3)
    mean = rng.normal(size=(5, 3))
    lm = LandmarkSet.from_vertex_ids([4, -1, 1], valid=[True, False, True])
    m = make_model(mean=mean, identity_basis=rng.normal(size=(2, 5, 3)),
                   triangles=[[0, 1, 2], [2, 3, 4]], landmarks={"ibug": lm})
    assert np.asarray(m.landmarks["ibug"].indices)[1, 0] == 0  # placeholder row
    save_npz(m, tmp_path / "m.npz")
    back = load_npz(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.landmarks["ibug"].valid, [True, False, True])
    # dropping vertex 0 (only used by the undefined row) keeps the set
    r = restrict(back, np.array([False, True, True, True, True]))
    np.testing.assert_array_equal(r.landmarks["ibug"].valid, [True, False, True])
    np.testing.assert_array_equal(np.asarray(r.landmarks["ibug"].indices)[[0, 2], 0], [3, 0])
    with pytest.raises(ModelFormatError, match="valid"):
        make_model(mean=mean, identity_basis=rng.normal(size=(2, 5, 3)),
                   triangles=[[0, 1, 2]],
                   landmarks={"x": LandmarkSet(lm.indices, lm.weights, np.ones(2, bool))})
