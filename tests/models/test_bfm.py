"""Basel Face Model loaders on fixtures written in the upstream file formats."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from jaxface.errors import DataNotFoundError, ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.bfm import load_bfm2009, load_bfm2017, load_deep3d_bfm
from jaxface.models.morphable import landmarks, vertices
from tests.models import fixtures as fx


def _check_linear(model, gt, rng):
    """vertices(model, a) == gt mean + a @ gt basis for coefficients drawn from the prior."""
    np.testing.assert_allclose(np.asarray(model.mean), gt["mean"], atol=2e-3)
    a = rng.normal(size=model.n_identity) * np.asarray(model.identity_std)
    want = gt["mean"] + np.einsum("k,kvc->vc", a, gt["identity_basis"])
    if "identity_std" not in gt:  # bases pre-scaled: a is in units of std 1
        assert np.allclose(model.identity_std, 1.0)
    np.testing.assert_allclose(np.asarray(vertices(model, a)), want, atol=5e-3)


# ---------------------------------------------------------------------------------------------
# BFM 2009
# ---------------------------------------------------------------------------------------------

def test_bfm2009_units_std_albedo_and_triangles(tmp_path, rng):
    gt = fx.write_bfm2009_mat(tmp_path / "01_MorphableModel.mat")
    m = load_bfm2009(tmp_path / "01_MorphableModel.mat")
    assert m.name == "bfm2009" and m.units == "mm" and m.expression_basis is None
    np.testing.assert_allclose(np.asarray(m.identity_std), gt["identity_std"], rtol=1e-5)
    _check_linear(m, gt, rng)
    np.testing.assert_allclose(np.asarray(m.albedo_mean), gt["albedo_mean"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(m.albedo_std), gt["albedo_std"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.albedo_basis), gt["albedo_basis"], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(m.triangles), gt["triangles"])  # 1-based -> 0
    assert 0.0 <= float(np.min(m.albedo_mean)) and float(np.max(m.albedo_mean)) <= 1.0


def test_bfm2009_segments_become_regions(tmp_path):
    gt = fx.write_bfm2009_mat(tmp_path / "01_MorphableModel.mat")
    m = load_bfm2009(tmp_path / "01_MorphableModel.mat", with_albedo=False)
    assert set(m.regions) == {"nose", "eyes", "mouth", "rest"}
    for i, name in enumerate(("nose", "eyes", "mouth", "rest")):
        np.testing.assert_array_equal(np.asarray(m.regions[name]), gt["segments"][:, i])
    assert all(np.asarray(m.regions[k]).any() for k in m.regions)
    # a file without segbin loads without regions
    d = {k: v for k, v in scipy.io.loadmat(str(tmp_path / "01_MorphableModel.mat")).items()
         if not k.startswith("__") and k != "segbin"}
    scipy.io.savemat(str(tmp_path / "noseg.mat"), d)
    assert load_bfm2009(tmp_path / "noseg.mat", with_albedo=False).regions == {}
    # bad segment data
    v = gt["mean"].shape[0]
    for bad in (np.ones((v, 3), np.uint8), np.ones((v - 1, 4), np.uint8),
                np.full((v, 4), 2, np.uint8)):
        scipy.io.savemat(str(tmp_path / "badseg.mat"), {**d, "segbin": bad})
        with pytest.raises(ModelFormatError) as e:
            load_bfm2009(tmp_path / "badseg.mat", with_albedo=False)
        assert e.value.field == "segbin"


def test_bfm2009_inward_winding_is_flipped_outward(tmp_path):
    gt = fx.write_bfm2009_mat(tmp_path / "m.mat", inward_winding=True)
    m = load_bfm2009(tmp_path / "m.mat", with_albedo=False)
    assert m.albedo_mean is None
    np.testing.assert_array_equal(np.asarray(m.triangles), gt["triangles"])
    assert F.outward_signed_volume(np.asarray(m.mean), np.asarray(m.triangles)) > 0


def test_bfm2009_with_eos_mapping_and_contours(tmp_path, data_dir):
    gt = fx.write_bfm2009_mat(tmp_path / "m.mat", k=2, n_vertices=53490)
    eos = data_dir / "eos-landmark-mappings"
    m = load_bfm2009(tmp_path / "m.mat", landmarks=eos / "ibug_to_bfm2009.txt",
                     contours=eos / "bfm2009_model_contours.json")
    lms, cset, ids = F.eos_landmarks(53490, eos / "ibug_to_bfm2009.txt",
                                     eos / "bfm2009_model_contours.json")
    # 23 fixed landmarks in the file + 16 contour landmarks; chin (9) and 6 inner-mouth missing.
    defined = sorted(set(range(1, 9)) | set(range(10, 18)) | {
        18, 20, 22, 23, 25, 27, 31, 34, 37, 40, 43, 46, 49, 52, 55, 58, 63, 67})
    assert ids == tuple(defined)
    assert set(m.landmarks) == {"ibug68"} and set(m.contours) == {"ibug68"}
    s = m.landmarks["ibug68"]
    assert len(s) == 68  # full iBUG-68 set in iBUG order, undefined rows marked invalid
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(s.valid)) + 1, defined)
    np.testing.assert_array_equal(np.asarray(s.valid), np.asarray(lms.valid))
    assert np.asarray(s.indices)[30, 0] == 8319  # iBUG 31 nose tip; eos ids are 0-based
    pts = landmarks(m, np.asarray(m.mean), "ibug68")
    np.testing.assert_allclose(np.asarray(pts)[30], gt["mean"][8319], atol=2e-3)
    c = m.contours["ibug68"]
    assert np.asarray(c.candidates).shape == (16, 8)
    # contour rows index the 68-row set directly: iBUG n is row n - 1
    np.testing.assert_array_equal(np.asarray(c.landmark_index) + 1,
                                  list(range(1, 9)) + list(range(10, 18)))
    assert np.asarray(s.valid)[np.asarray(c.landmark_index)].all()
    assert np.asarray(c.candidates)[0, 0] == 27302  # first right_contour vertex
    assert np.asarray(s.indices)[0, 0] == 27302  # its initial guess: the first candidate
    # without contours the contour rows are undefined
    m2 = load_bfm2009(tmp_path / "m.mat", landmarks=eos / "ibug_to_bfm2009.txt",
                      with_albedo=False)
    assert not np.asarray(m2.landmarks["ibug68"].valid)[:17].any() and not m2.contours
    # a mapping for another model does not fit a small model
    with pytest.raises(ModelFormatError, match="out of range"):
        F.eos_landmarks(100, eos / "ibug_to_bfm2009.txt")
    bad = tmp_path / "ibug_to_x.txt"
    bad.write_text("[landmark_mappings]\n69 = 3\n")
    with pytest.raises(ModelFormatError, match="outside 1..68"):
        F.eos_landmarks(100, bad)


def test_bfm2017_with_eos_mapping_and_contours(tmp_path, data_dir):
    fx.write_bfm2017_h5(tmp_path / "model2017-1_bfm_nomouth.h5", k=2, ke=1, kc=1,
                        n_vertices=53149)
    eos = data_dir / "eos-landmark-mappings"
    m = load_bfm2017(tmp_path / "model2017-1_bfm_nomouth.h5",
                     landmarks=eos / "ibug_to_bfm2017-1_bfm_nomouth.txt",
                     contours=eos / "bfm2017-1_bfm_nomouth_model_contours.json")
    s, c = m.landmarks["ibug68"], m.contours["ibug68"]
    assert len(s) == 68 and np.asarray(s.indices)[30, 0] == 8156  # nose tip
    assert np.asarray(s.indices)[8, 0] == 47846  # chin, defined in this mapping
    valid = np.asarray(s.valid)
    assert valid[:17].all() and valid[30] and 0 < int((~valid).sum()) < 68
    assert np.asarray(c.candidates).shape == (16, 11) and np.asarray(c.candidates)[0, 0] == 22451


def test_eos_mapping_path_uses_jaxface_data(data_dir, monkeypatch):
    monkeypatch.setenv("JAXFACE_DATA", str(data_dir))
    assert F.eos_mapping_path("ibug_to_sfm.txt").is_file()
    with pytest.raises(DataNotFoundError):
        F.eos_mapping_path("no_such_mapping.txt")


def test_bfm2009_bad_files(tmp_path):
    fx.write_bfm2009_mat(tmp_path / "good.mat")
    raw = (tmp_path / "good.mat").read_bytes()
    (tmp_path / "trunc.mat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFormatError) as e:
        load_bfm2009(tmp_path / "trunc.mat")
    assert "trunc.mat" in str(e.value)
    (tmp_path / "text.mat").write_text("not a mat file at all")
    with pytest.raises(ModelFormatError):
        load_bfm2009(tmp_path / "text.mat")
    # the wrong model (Deep3DFaceRecon's file): names the missing key
    fx.write_deep3d_mat(tmp_path / "BFM_model_front.mat")
    with pytest.raises(ModelFormatError) as e:
        load_bfm2009(tmp_path / "BFM_model_front.mat")
    assert e.value.field == "shapeMU" and "meanshape" in str(e.value)
    # inconsistent shapes and bad indices
    d = scipy.io.loadmat(str(tmp_path / "good.mat"))
    d = {k: v for k, v in d.items() if not k.startswith("__")}
    scipy.io.savemat(str(tmp_path / "ev.mat"), {**d, "shapeEV": d["shapeEV"][:-1]})
    with pytest.raises(ModelFormatError) as e:
        load_bfm2009(tmp_path / "ev.mat")
    assert e.value.field == "shapeEV"
    scipy.io.savemat(str(tmp_path / "tl.mat"), {**d, "tl": d["tl"] - 1})  # 0-based: has a 0
    with pytest.raises(ModelFormatError) as e:
        load_bfm2009(tmp_path / "tl.mat")
    assert e.value.field == "tl"
    scipy.io.savemat(str(tmp_path / "pc.mat"), {**d, "shapePC": d["shapePC"] * 3.0})
    with pytest.raises(ModelFormatError) as e:
        load_bfm2009(tmp_path / "pc.mat")
    assert e.value.field == "shapePC"
    with pytest.raises(FileNotFoundError):
        load_bfm2009(tmp_path / "missing.mat")


# ---------------------------------------------------------------------------------------------
# BFM 2017 / 2019
# ---------------------------------------------------------------------------------------------

def test_bfm2017_h5(tmp_path, rng):
    gt = fx.write_bfm2017_h5(tmp_path / "model2017-1_bfm_nomouth.h5")
    m = load_bfm2017(tmp_path / "model2017-1_bfm_nomouth.h5")
    assert m.name == "model2017-1_bfm_nomouth" and m.expression_kind == "pca"
    np.testing.assert_allclose(np.asarray(m.identity_std), gt["identity_std"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.expression_std), gt["expression_std"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.albedo_std), gt["albedo_std"], rtol=1e-5)
    _check_linear(m, gt, rng)  # mean includes the expression mean offset
    b = rng.normal(size=m.n_expression) * np.asarray(m.expression_std)
    want = gt["mean"] + np.einsum("k,kvc->vc", b, gt["expression_basis"])
    np.testing.assert_allclose(np.asarray(vertices(m, None, b)), want, atol=5e-3)
    np.testing.assert_allclose(np.asarray(m.albedo_mean), gt["albedo_mean"], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(m.triangles), gt["triangles"])


def test_bfm2017_scaled_basis_is_normalised(tmp_path, rng):
    import h5py

    gt = fx.write_bfm2017_h5(tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        u = f["shape/model/pcaBasis"][()]
        var = f["shape/model/pcaVariance"][()]
        del f["shape/model/pcaBasis"]
        f["shape/model/pcaBasis"] = u * np.sqrt(var)[None, :]
    m = load_bfm2017(tmp_path / "m.h5", with_albedo=False, with_expression=False)
    assert m.expression_basis is None and m.albedo_mean is None
    np.testing.assert_allclose(np.asarray(m.identity_basis), gt["identity_basis"], atol=1e-5)


def test_bfm2017_bad_files(tmp_path):
    import h5py

    gt_path = tmp_path / "good.h5"
    fx.write_bfm2017_h5(gt_path)
    raw = gt_path.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ModelFormatError):
        load_bfm2017(tmp_path / "trunc.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["weights"] = np.zeros(3)
    with pytest.raises(ModelFormatError) as e:
        load_bfm2017(tmp_path / "other.h5")
    assert e.value.field == "shape"
    with h5py.File(gt_path, "r+") as f:
        del f["shape/model/pcaVariance"]
        f["shape/model/pcaVariance"] = np.ones(2)
    with pytest.raises(ModelFormatError) as e:
        load_bfm2017(gt_path)
    assert e.value.field == "shape/model/pcaBasis"
    fx.write_bfm2009_mat(tmp_path / "bfm09.mat")
    with pytest.raises(ModelFormatError):
        load_bfm2017(tmp_path / "bfm09.mat")


# ---------------------------------------------------------------------------------------------
# Deep3DFaceRecon BFM_model_front.mat
# ---------------------------------------------------------------------------------------------

def test_deep3d_bfm(tmp_path, rng):
    gt = fx.write_deep3d_mat(tmp_path / "BFM_model_front.mat")
    m = load_deep3d_bfm(tmp_path / "BFM_model_front.mat")
    assert (m.n_identity, m.n_expression, m.n_albedo) == (80, 64, 80)
    for s in (m.identity_std, m.expression_std, m.albedo_std):
        np.testing.assert_array_equal(np.asarray(s), 1.0)
    _check_linear(m, gt, rng)
    np.testing.assert_allclose(np.asarray(m.expression_basis), gt["expression_basis"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(m.albedo_mean), gt["albedo_mean"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(m.albedo_basis), gt["albedo_basis"], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(m.triangles), gt["triangles"])
    np.testing.assert_array_equal(np.asarray(m.landmarks["ibug68"].indices)[:, 0],
                                  gt["keypoints"])
    np.testing.assert_array_equal(np.asarray(m.regions["skin"]), gt["skin"])
    np.testing.assert_array_equal(np.flatnonzero(m.regions["front"]), gt["front"])


def test_deep3d_bfm_bad_files(tmp_path):
    fx.write_bfm2009_mat(tmp_path / "bfm09.mat")
    with pytest.raises(ModelFormatError) as e:
        load_deep3d_bfm(tmp_path / "bfm09.mat")
    assert e.value.field == "meanshape"
    gt = fx.write_deep3d_mat(tmp_path / "d.mat")
    d = {k: v for k, v in scipy.io.loadmat(str(tmp_path / "d.mat")).items()
         if not k.startswith("__")}
    scipy.io.savemat(str(tmp_path / "kp.mat"), {**d, "keypoints": d["keypoints"][:, :60]})
    with pytest.raises(ModelFormatError) as e:
        load_deep3d_bfm(tmp_path / "kp.mat")
    assert e.value.field == "keypoints"
    n = gt["mean"].shape[0]
    scipy.io.savemat(str(tmp_path / "idb.mat"), {**d, "idBase": d["idBase"][: 3 * n - 3]})
    with pytest.raises(ModelFormatError) as e:
        load_deep3d_bfm(tmp_path / "idb.mat")
    assert e.value.field == "idBase"
