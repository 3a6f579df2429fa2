"""MediaPipe canonical face mesh on the staged real files."""

from __future__ import annotations

import numpy as np
import pytest

from jaxface.errors import ModelFormatError
from jaxface.models import _formats as F
from jaxface.models.mediapipe import (
    load_mediapipe,
    load_mediapipe_procrustes_weights,
    procrustes_weight_array,
)
from jaxface.models.morphable import landmarks, vertices


def test_canonical_face_mesh(data_dir):
    folder = data_dir / "mediapipe-face-geometry"
    m = load_mediapipe(folder / "canonical_face_model.obj")
    assert (m.n_vertices, m.n_triangles, m.n_identity) == (468, 898, 0)
    assert np.asarray(m.identity_basis).shape == (0, 468, 3) and m.units == "mm"
    v = np.asarray(vertices(m))
    ext = v.max(0) - v.min(0)  # README: 154.9 x 176.7 x 100.2 mm, eye corners 88.9 mm apart
    np.testing.assert_allclose(ext, [154.9, 176.7, 100.2], atol=0.1)
    assert abs(np.linalg.norm(v[33] - v[263]) - 88.9) < 0.1
    assert F.outward_signed_volume(v, np.asarray(m.triangles)) > 0
    # the face looks toward +z: the nose tip (landmark 4) is the front-most region
    assert v[4, 2] > np.percentile(v[:, 2], 95)
    lm = np.asarray(landmarks(m, v, "mediapipe468"))
    np.testing.assert_array_equal(lm, v)  # vertex i is Face Mesh landmark i
    assert m.uv.shape == (468, 2) and m.uv_triangles.shape == (898, 3)
    assert 0.0 <= float(np.min(m.uv)) and float(np.max(m.uv)) <= 1.0
    ids, w = load_mediapipe_procrustes_weights(folder /
                                               "geometry_pipeline_metadata_landmarks.pbtxt",
                                               n_vertices=468)
    assert ids.shape == (33,) and ids[0] == 4 and abs(float(w[0]) - 0.070909939706326) < 1e-7
    assert abs(float(w.sum()) - 1.055) < 1e-3
    np.testing.assert_array_equal(np.flatnonzero(m.regions["procrustes"]), np.sort(ids))
    dense = procrustes_weight_array(ids, w, 468)
    assert dense.shape == (468,) and dense[129] == w[list(ids).index(129)]


def test_iris_mesh_and_default_path(data_dir, monkeypatch):
    monkeypatch.setenv("JAXFACE_DATA", str(data_dir))
    m = load_mediapipe(iris=True)
    assert m.n_vertices == 478 and "mediapipe478" in m.landmarks
    m468 = load_mediapipe(procrustes=False)
    assert m468.regions == {} and m468.n_vertices == 468
    np.testing.assert_allclose(np.asarray(m.mean)[:468], np.asarray(m468.mean), atol=1e-4)


def test_bad_files(tmp_path, data_dir):
    (tmp_path / "tri.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ModelFormatError, match="468"):
        load_mediapipe(tmp_path / "tri.obj")
    (tmp_path / "broken.obj").write_text("v 0 0 0\nv 1 0\nf 1 2 7\n")
    with pytest.raises(ModelFormatError):
        load_mediapipe(tmp_path / "broken.obj")
    (tmp_path / "meta.pbtxt").write_text("input_source: FACE_LANDMARK_PIPELINE\n")
    with pytest.raises(ModelFormatError):
        load_mediapipe_procrustes_weights(tmp_path / "meta.pbtxt")
    (tmp_path / "big.pbtxt").write_text(
        "procrustes_landmark_basis { landmark_id: 900 weight: 0.1 }\n")
    with pytest.raises(ModelFormatError):
        load_mediapipe(data_dir / "mediapipe-face-geometry" / "canonical_face_model.obj",
                       procrustes=tmp_path / "big.pbtxt")
