"""FLAME loader: Python 2 / chumpy pickles read without chumpy, and unsafe pickles refused."""

from __future__ import annotations

import dataclasses
import importlib.util
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.errors import ModelFormatError
from jaxface.geometry import axis_angle_to_matrix
from jaxface.models import _formats as F
from jaxface.models.flame import (
    FlameArticulation,
    flame_contour_row,
    flame_dynamic_landmarks,
    flame_head_rotation,
    load_flame,
    load_flame_articulation,
    load_flame_contour_embedding,
    load_flame_landmarks,
    load_flame_with_articulation,
)
from jaxface.models.morphable import landmarks, validate, vertices
from tests.models import fixtures as fx


def test_fixture_pickle_references_chumpy_like_the_real_file(tmp_path):
    fx.write_flame_pkl(tmp_path / "generic_model.pkl")
    raw = (tmp_path / "generic_model.pkl").read_bytes()
    import pickletools

    globals_ = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert {"chumpy.ch Ch", "scipy.sparse.csc csc_matrix", "numpy.core.multiarray _reconstruct",
            "__builtin__ set"} <= globals_
    assert importlib.util.find_spec("chumpy") is None  # nothing to fall back on
    with pytest.raises(ModuleNotFoundError):  # the plain unpickler cannot read it
        pickle.loads(raw, encoding="latin1")


def test_flame_model_and_articulation(tmp_path, rng):
    gt = fx.write_flame_pkl(tmp_path / "generic_model.pkl")
    m, art = load_flame_with_articulation(tmp_path / "generic_model.pkl")
    assert "chumpy" not in sys.modules
    assert (m.n_identity, m.n_expression, m.expression_kind) == (300, 100, "pca")
    assert m.units == "mm" and m.albedo_mean is None and m.name == "generic_model"
    np.testing.assert_array_equal(np.asarray(m.identity_std), 1.0)
    np.testing.assert_allclose(np.asarray(m.mean), gt["mean"], atol=1e-4)  # metres -> mm
    a, b = rng.normal(size=300), rng.normal(size=100)
    want = (gt["mean"] + np.einsum("k,kvc->vc", a, gt["identity_basis"])
            + np.einsum("k,kvc->vc", b, gt["expression_basis"]))
    np.testing.assert_allclose(np.asarray(vertices(m, a, b)), want, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(m.triangles), gt["triangles"])

    assert isinstance(art, FlameArticulation) and art.parents == gt["parents"]
    np.testing.assert_allclose(art.joint_regressor, gt["J_regressor"], atol=1e-7)
    np.testing.assert_allclose(art.skinning_weights, gt["weights"], atol=1e-7)
    np.testing.assert_allclose(art.pose_basis, gt["posedirs"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(art.joints_template, gt["J"], atol=1e-4)
    leaves = jax.tree_util.tree_leaves(art)
    assert len(leaves) == 4 and art.n_joints == 5
    art2 = load_flame_articulation(tmp_path / "generic_model.pkl")
    np.testing.assert_array_equal(art2.pose_basis, art.pose_basis)
    m2 = load_flame(tmp_path / "generic_model.pkl", n_identity=350)
    assert (m2.n_identity, m2.n_expression) == (350, 50)


def test_flame_landmark_embeddings(tmp_path):
    fx.write_flame_pkl(tmp_path / "generic_model.pkl")
    tri = np.asarray(load_flame(tmp_path / "generic_model.pkl").triangles)
    d = fx.write_flame_landmark_embedding_npy(tmp_path / "landmark_embedding.npy", tri.shape[0])
    # like DECA's file, the dynamic entries are torch tensors: numpy alone cannot read it
    raw = (tmp_path / "landmark_embedding.npy").read_bytes()
    import pickletools

    globals_ = {arg for op, arg, _ in pickletools.genops(raw[128:]) if op.name == "GLOBAL"}
    assert {"torch._utils _rebuild_tensor_v2", "torch.storage _load_from_bytes"} <= globals_
    assert importlib.util.find_spec("torch") is None
    with pytest.raises(ModuleNotFoundError):
        np.load(tmp_path / "landmark_embedding.npy", allow_pickle=True, encoding="latin1")

    m = load_flame(tmp_path / "generic_model.pkl",
                   landmarks=tmp_path / "landmark_embedding.npy")
    assert "torch" not in sys.modules
    assert set(m.landmarks) == {"ibug68", "ibug51"} and set(m.contours) == {"ibug68"}
    emb = load_flame_contour_embedding(tmp_path / "landmark_embedding.npy", tri)
    assert emb.yaw_sign == 1
    np.testing.assert_array_equal(emb.indices, tri[d["dynamic_lmk_faces_idx"]])
    np.testing.assert_array_equal(emb.weights, d["dynamic_lmk_bary_coords"])
    got = np.asarray(landmarks(m, np.asarray(m.mean), "ibug68"))
    v = np.asarray(m.mean)
    faces = tri[d["full_lmk_faces_idx"][0]]
    want = np.einsum("lk,lkc->lc", d["full_lmk_bary_coords"][0], v[faces])
    np.testing.assert_allclose(got, want, atol=1e-4)

    fid, bary = fx.write_flame_static_embedding(tmp_path / "flame_static_embedding.pkl",
                                                tri.shape[0])
    sets = load_flame_landmarks(tmp_path / "flame_static_embedding.pkl", tri)
    assert set(sets) == {"ibug51"}
    np.testing.assert_array_equal(np.asarray(sets["ibug51"].indices), tri[fid])
    np.testing.assert_allclose(np.asarray(sets["ibug51"].weights), bary, atol=1e-6)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_pickles_are_refused(tmp_path):
    for payload, name in ((pickle.dumps({"v_template": _Evil()}, protocol=2), "os.system"),
                          (pickle.dumps({"f": _Evil()}, protocol=4), "os.system")):
        (tmp_path / "evil.pkl").write_bytes(payload)
        with pytest.raises(ModelFormatError, match="refusing") as e:
            load_flame(tmp_path / "evil.pkl")
        assert "posix" in str(e.value) or name in str(e.value)
    (tmp_path / "eval.pkl").write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(ModelFormatError, match="builtins.eval"):
        load_flame(tmp_path / "eval.pkl")
    # another chumpy class than Ch is not on the allow-list either
    (tmp_path / "sel.pkl").write_bytes(b"cchumpy.reordering\nSelect\n)\x81.")
    with pytest.raises(ModelFormatError, match="chumpy.reordering.Select"):
        load_flame(tmp_path / "sel.pkl")
    # the restricted reconstructor only builds allow-listed classes
    with pytest.raises(pickle.UnpicklingError):
        F._safe_reconstructor(dict, object, None)


def test_flame_bad_files(tmp_path):
    fx.write_flame_pkl(tmp_path / "g.pkl")
    raw = (tmp_path / "g.pkl").read_bytes()
    (tmp_path / "trunc.pkl").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_flame(tmp_path / "trunc.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ModelFormatError, match="dict"):
        load_flame(tmp_path / "list.pkl")
    (tmp_path / "nokey.pkl").write_bytes(fx.py2_pickle_bytes({"f": np.zeros((2, 3), np.uint32)}))
    with pytest.raises(ModelFormatError) as e:
        load_flame(tmp_path / "nokey.pkl")
    assert e.value.field == "v_template"
    with pytest.raises(ModelFormatError) as e:
        load_flame(tmp_path / "g.pkl", n_identity=401)
    assert e.value.field == "shapedirs"
    # embedding for a bigger mesh: face ids out of range
    fx.write_flame_static_embedding(tmp_path / "emb.pkl", 100000)
    with pytest.raises(ModelFormatError) as e:
        load_flame(tmp_path / "g.pkl", landmarks=tmp_path / "emb.pkl")
    assert e.value.field == "lmk_face_idx"


# ------------------------------------------------------------------------------------------------
# Dynamic (yaw-dependent) jawline landmarks
# ------------------------------------------------------------------------------------------------

# The row order the upstream readers use, written out as a table: rows 0..39 are yaws 0..39,
# rows 40..78 yaws -1..-39; beyond the range the end row of that side.
_ROW_OF_YAW = {**{a: a for a in range(40)}, **{-a: 39 + a for a in range(1, 40)}}


def _upstream_row(yaw_deg: float, sign: int) -> int:
    a = int(np.round(sign * yaw_deg))
    return _ROW_OF_YAW[min(max(a, -39), 39)]


def _yaw_rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])


def test_ringnet_dynamic_embedding_with_static_embedding(tmp_path):
    fx.write_flame_pkl(tmp_path / "generic_model.pkl")
    f = np.asarray(load_flame(tmp_path / "generic_model.pkl", with_articulation=False).triangles)
    dyn = fx.write_flame_dynamic_embedding_npy(tmp_path / "flame_dynamic_embedding.npy",
                                               f.shape[0])
    ref = np.load(tmp_path / "flame_dynamic_embedding.npy", allow_pickle=True,
                  encoding="latin1")[()]  # what FLAME_PyTorch / smplx read
    np.testing.assert_array_equal(ref["lmk_face_idx"], dyn["lmk_face_idx"])
    fid, bary = fx.write_flame_static_embedding(tmp_path / "flame_static_embedding.pkl",
                                                f.shape[0])
    m = load_flame(tmp_path / "generic_model.pkl",
                   landmarks=[tmp_path / "flame_static_embedding.pkl",
                              tmp_path / "flame_dynamic_embedding.npy"])
    validate(m)
    assert set(m.landmarks) == {"ibug51", "ibug68"} and m.landmarks["ibug68"].valid is None
    v = np.asarray(m.mean)
    # ibug68 = the frontal (row 0) jawline + the 51 static points, as FLAME_PyTorch concatenates
    want_jaw = np.einsum("lk,lkc->lc", dyn["lmk_b_coords"][0], v[f[dyn["lmk_face_idx"][0]]])
    want_in = np.einsum("lk,lkc->lc", bary, v[f[fid]])
    got = np.asarray(landmarks(m, m.mean, "ibug68"))
    np.testing.assert_allclose(got, np.concatenate([want_jaw, want_in]), atol=1e-3)
    # contour candidates: per jawline landmark, the nearest vertex of its point in every row
    cs = m.contours["ibug68"]
    np.testing.assert_array_equal(cs.landmark_index, np.arange(17))
    for j in (0, 8, 16):
        near = {int(f[dyn["lmk_face_idx"][r, j]][np.argmax(dyn["lmk_b_coords"][r, j])])
                for r in range(79)}
        cand = np.asarray(cs.candidates[j])
        assert set(cand[cand >= 0].tolist()) == near

    emb = load_flame_contour_embedding(tmp_path / "flame_dynamic_embedding.npy", f)
    assert emb.yaw_sign == -1
    select = jax.jit(flame_dynamic_landmarks)
    for yaw in (0.0, 0.4, 0.6, 12.3, -1.2, -17.0, 38.6, 39.4, -39.4, 60.0, -75.0):
        r = _upstream_row(yaw, -1)
        assert int(flame_contour_row(emb, _yaw_rotation(yaw))) == r, yaw
        ls = select(emb, jnp.asarray(_yaw_rotation(yaw), jnp.float32))
        pts = np.einsum("lk,lkc->lc", np.asarray(ls.weights), v[np.asarray(ls.indices)])
        want = np.einsum("lk,lkc->lc", dyn["lmk_b_coords"][r], v[f[dyn["lmk_face_idx"][r]]])
        np.testing.assert_allclose(pts, want, atol=1e-3)
    # vmap over rotations; the DECA convention flips the sign
    rots = jnp.asarray(np.stack([_yaw_rotation(a) for a in (-20.0, 0.0, 25.0)]))
    rows = jax.vmap(lambda r: flame_contour_row(emb, r))(rots)
    np.testing.assert_array_equal(rows, [_upstream_row(a, -1) for a in (-20.0, 0.0, 25.0)])
    deca = dataclasses.replace(emb, yaw_sign=1)
    np.testing.assert_array_equal(flame_contour_row(deca, rots),
                                  [_upstream_row(a, 1) for a in (-20.0, 0.0, 25.0)])


def test_head_rotation_is_global_then_neck(rng):
    pose = np.zeros((5, 3))
    pose[0, 1], pose[1, 1] = np.deg2rad(20.0), np.deg2rad(10.0)  # yaw 20 + 10
    r = np.asarray(flame_head_rotation(jnp.asarray(pose)))
    np.testing.assert_allclose(r, _yaw_rotation(30.0), atol=1e-6)
    pose = rng.normal(size=(5, 3)) * 0.5
    want = (np.asarray(axis_angle_to_matrix(jnp.asarray(pose[0])))
            @ np.asarray(axis_angle_to_matrix(jnp.asarray(pose[1]))))
    np.testing.assert_allclose(np.asarray(flame_head_rotation(pose)), want, atol=1e-6)


class _RawStorage:
    def __init__(self, raw: bytes):
        self.raw = raw

    def __reduce__(self):
        return (fx.GlobalRef("torch.storage", "_load_from_bytes"), (self.raw,))


class _RawTensor:
    def __init__(self, raw: bytes, shape, stride):
        self.raw, self.shape, self.stride = raw, shape, stride

    def __reduce__(self):
        from collections import OrderedDict

        return (fx.GlobalRef("torch._utils", "_rebuild_tensor_v2"),
                (_RawStorage(self.raw), 0, self.shape, self.stride, False, OrderedDict()))


def _deca_like(path, tensor) -> None:
    import io

    buf = io.BytesIO()
    d = {"dynamic_lmk_faces_idx": tensor,
         "dynamic_lmk_bary_coords": fx.TensorStandIn(np.full((79, 17, 3), 1 / 3, np.float32))}
    arr = np.empty((), dtype=object)
    arr[()] = d
    fx.Py3Pickler(buf, 3).dump(arr)
    fx._npy_object_file(path, buf.getvalue())


def test_dynamic_embedding_bad_files(tmp_path):
    fx.write_flame_pkl(tmp_path / "g.pkl")
    f = np.asarray(load_flame(tmp_path / "g.pkl", with_articulation=False).triangles)
    nf = f.shape[0]
    fx.write_flame_dynamic_embedding_npy(tmp_path / "dyn.npy", nf)
    with pytest.raises(ModelFormatError, match="load_flame_contour_embedding"):
        load_flame_landmarks(tmp_path / "dyn.npy", f)
    fx.write_flame_static_embedding(tmp_path / "static.pkl", nf)
    with pytest.raises(ModelFormatError, match="no dynamic"):
        load_flame_contour_embedding(tmp_path / "static.pkl", f)
    fx.write_flame_dynamic_embedding_npy(tmp_path / "rows.npy", nf, rows=78)
    with pytest.raises(ModelFormatError) as e:
        load_flame(tmp_path / "g.pkl", landmarks=tmp_path / "rows.npy")
    assert e.value.field == "lmk_face_idx" and "(79, *)" in str(e.value)
    fx.write_flame_dynamic_embedding_npy(tmp_path / "big.npy", nf + 10000)
    with pytest.raises(ModelFormatError) as e:
        load_flame_contour_embedding(tmp_path / "big.npy", f)
    assert e.value.field == "lmk_face_idx"
    raw = (tmp_path / "dyn.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_flame_contour_embedding(tmp_path / "trunc.npy", f)

    # torch tensors: sound, truncated data, a foreign global inside the storage bytes
    idx = np.zeros((79, 17), np.int64)
    good = fx.torch_legacy_storage_bytes(idx.reshape(-1))
    _deca_like(tmp_path / "ok.npy", _RawTensor(good, (79, 17), (17, 1)))
    emb = load_flame_contour_embedding(tmp_path / "ok.npy", f)
    np.testing.assert_array_equal(emb.indices, np.broadcast_to(f[0], (79, 17, 3)))
    _deca_like(tmp_path / "short.npy", _RawTensor(good[:-16], (79, 17), (17, 1)))
    with pytest.raises(ModelFormatError, match="truncated torch storage"):
        load_flame_contour_embedding(tmp_path / "short.npy", f)
    _deca_like(tmp_path / "past.npy", _RawTensor(good, (79, 18), (18, 1)))
    with pytest.raises(ModelFormatError, match="past the end"):
        load_flame_contour_embedding(tmp_path / "past.npy", f)
    evil = good.replace(b"ctorch\nLongStorage\n", b"cos\nsystem\n")
    assert evil != good
    _deca_like(tmp_path / "evil.npy", _RawTensor(evil, (79, 17), (17, 1)))
    with pytest.raises(ModelFormatError, match="os.system"):
        load_flame_contour_embedding(tmp_path / "evil.npy", f)
