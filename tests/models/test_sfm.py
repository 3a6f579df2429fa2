"""eos / Surrey Face Model .bin loader on fixtures written byte by byte in the cereal layout."""

from __future__ import annotations

import numpy as np
import pytest

from jaxface.errors import ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.morphable import vertices
from jaxface.models.sfm import load_sfm, read_eos_model_file
from tests.models import fixtures as fx


def test_sfm_shape_only_with_eos_mapping(tmp_path, data_dir, rng):
    gt = fx.write_sfm_bin(tmp_path / "sfm_shape_3448.bin")
    eos = data_dir / "eos-landmark-mappings"
    m = load_sfm(tmp_path / "sfm_shape_3448.bin", landmarks=eos / "ibug_to_sfm.txt",
                 contours=eos / "sfm_model_contours.json")
    assert m.n_vertices == 3448 and m.albedo_mean is None and m.expression_basis is None
    np.testing.assert_allclose(np.asarray(m.identity_std), gt["identity_std"], rtol=1e-5)
    a = rng.normal(size=3) * gt["identity_std"]
    want = gt["mean"] + np.einsum("k,kvc->vc", a, gt["identity_basis"])
    np.testing.assert_allclose(np.asarray(vertices(m, a)), want, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(m.triangles), gt["triangles"])
    np.testing.assert_allclose(np.asarray(m.uv), gt["uv"], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(m.uv_triangles), gt["triangles"])
    s = m.landmarks["ibug68"]
    # ibug_to_sfm.txt maps all but the 16 contour landmarks (added from the contours file) and
    # the inner mouth corners 61 and 65: 68 rows in iBUG order, those two invalid
    _, _, ids = F.eos_landmarks(3448, eos / "ibug_to_sfm.txt", eos / "sfm_model_contours.json")
    assert ids == tuple(i for i in range(1, 69) if i not in (61, 65)) and len(s) == 68
    np.testing.assert_array_equal(np.flatnonzero(~np.asarray(s.valid)) + 1, [61, 65])
    assert np.asarray(s.indices)[30, 0] == 114  # nose tip (iBUG 31)
    c = m.contours["ibug68"]
    assert np.asarray(c.candidates).shape == (16, 17)
    np.testing.assert_array_equal(np.asarray(c.landmark_index),
                                  list(range(0, 8)) + list(range(9, 17)))
    assert np.asarray(c.candidates)[0, 0] == 380  # first right_contour vertex


def test_sfm_full_model_and_blendshapes(tmp_path, rng):
    gt = fx.write_sfm_bin(tmp_path / "m.bin", n_vertices=None, with_color=True,
                          with_expression=True,
                          landmark_definitions={"center.nose.tip": 5, "right.eye.corner": 9})
    mf = read_eos_model_file(tmp_path / "m.bin")
    assert mf.version == 4 and mf.landmark_definitions == {"center.nose.tip": 5,
                                                           "right.eye.corner": 9}
    m = load_sfm(tmp_path / "m.bin")
    np.testing.assert_allclose(np.asarray(m.mean), gt["mean"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(m.expression_std), gt["expression_std"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m.expression_basis), gt["expression_basis"],
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(m.albedo_mean), gt["albedo_mean"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(m.albedo_std), gt["albedo_std"], rtol=1e-5)
    d = fx.write_eos_blendshapes(tmp_path / "expression_blendshapes.bin", m.n_vertices)
    mb = load_sfm(tmp_path / "m.bin", blendshapes=tmp_path / "expression_blendshapes.bin")
    assert mb.expression_kind == "blendshape"
    assert mb.expression_names == ("anger", "smile", "surprise")
    w = np.array([0.2, 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(vertices(mb, None, w)) - np.asarray(mb.mean),
                               np.einsum("k,kvc->vc", w, d), atol=1e-4)


def test_sfm_bad_files(tmp_path):
    fx.write_sfm_bin(tmp_path / "good.bin", n_vertices=None)
    raw = (tmp_path / "good.bin").read_bytes()
    (tmp_path / "trunc.bin").write_bytes(raw[:-7])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_sfm(tmp_path / "trunc.bin")
    (tmp_path / "extra.bin").write_bytes(raw + b"\x00" * 8)
    with pytest.raises(ModelFormatError):
        load_sfm(tmp_path / "extra.bin")
    (tmp_path / "ver.bin").write_bytes(b"\x07\x00\x00\x00" + raw[4:])
    with pytest.raises(ModelFormatError) as e:
        load_sfm(tmp_path / "ver.bin")
    assert e.value.field == "version"
    fx.write_bfm2009_mat(tmp_path / "bfm.mat")
    with pytest.raises(ModelFormatError):
        load_sfm(tmp_path / "bfm.mat")
    with pytest.raises(ModelFormatError, match="out of range"):  # SFM mapping on a small model
        load_sfm(tmp_path / "good.bin", landmarks=_mapping(tmp_path))


def _mapping(tmp_path):
    p = tmp_path / "ibug_to_x.txt"
    p.write_text("[landmark_mappings]\n31 = 999999\n")
    return p
