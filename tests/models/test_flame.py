"""FLAME loader: Python 2 / chumpy pickles read without chumpy, and unsafe pickles refused."""

from __future__ import annotations

import importlib.util
import pickle
import sys

import jax
import numpy as np
import pytest

from jaxface.errors import ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.flame import (
    FlameArticulation,
    load_flame,
    load_flame_articulation,
    load_flame_landmarks,
    load_flame_with_articulation,
)
from jaxface.models.morphable import landmarks, vertices
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
    # the fixture is what numpy itself reads from such a file
    ref = np.load(tmp_path / "landmark_embedding.npy", allow_pickle=True, encoding="latin1")[()]
    np.testing.assert_array_equal(ref["full_lmk_faces_idx"], d["full_lmk_faces_idx"])

    m = load_flame(tmp_path / "generic_model.pkl",
                   landmarks=tmp_path / "landmark_embedding.npy")
    assert set(m.landmarks) == {"ibug68", "ibug51"}
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
