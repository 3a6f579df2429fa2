"""Multi-image and video landmark fitting (shared identity, temporal smoothness)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.camera import PerspectiveCamera, project
from jaxface.fit import MODEL_TO_CAMERA, fit_landmarks_sequence
from jaxface.geometry import axis_angle_to_matrix
from jaxface.models import landmarks, load_default, vertices

H, W = 480, 640
CAM = PerspectiveCamera(fx=640.0, fy=640.0, cx=W / 2, cy=H / 2)
N = 10


@pytest.fixture(scope="module")
def sequence():
    """A head turning steadily while sliding sideways, with 1.5 px landmark noise."""
    model = load_default()
    rng = np.random.default_rng(0)
    ident = rng.normal(0, 1, model.n_identity).astype(np.float32)
    lms, trans = [], []
    for i in range(N):
        e = np.zeros(model.n_expression, np.float32)
        e[list(model.expression_names).index("jawOpen")] = 0.3 * np.sin(i / 3) ** 2
        rot = axis_angle_to_matrix(jnp.array([0.05, -0.4 + 0.08 * i, 0.0])) @ MODEL_TO_CAMERA
        t = np.array([-20.0 + 4.0 * i, 0.0, 650.0], np.float32)
        lm = project(CAM, landmarks(model, vertices(model, ident, e)) @ rot.T + t)
        lms.append(np.asarray(lm) + rng.normal(0, 1.5, (68, 2)))
        trans.append(t)
    return model, np.stack(lms).astype(np.float32), np.stack(trans), ident


def _fit(model, lms, **kw):
    return fit_landmarks_sequence(model, lms, (H, W), focal=640.0, use_contour=False, **kw)


def test_shared_identity_and_smoothness(sequence):
    model, lms, trans, _ = sequence
    independent = _fit(model, lms, steps=0)
    collection = _fit(model, lms, steps=300)
    video = _fit(model, lms, steps=300, smoothness=1.0)

    ident = np.asarray(collection.identity)
    assert ident.shape == (N, model.n_identity)
    np.testing.assert_array_equal(ident, np.broadcast_to(ident[0], ident.shape))
    # independent fits disagree about the identity; the joint fit has one
    assert np.ptp(np.asarray(independent.identity), axis=0).max() > 0.1

    def jitter(r):  # mean second difference of the translation (mm); the truth has none
        return np.mean(np.linalg.norm(np.diff(np.asarray(r.translation), 2, axis=0), axis=1))

    def lateral_error(r):  # x/y (depth is ambiguous with face size for landmark-only fits)
        return np.mean(np.abs(np.asarray(r.translation)[:, :2] - trans[:, :2]))

    assert jitter(video) < 0.2 * jitter(independent)
    assert lateral_error(video) < lateral_error(independent)
    for r in (collection, video):
        rmse = float(np.sqrt(np.nanmean(np.asarray(r.residuals) ** 2)))
        assert rmse < 3.0  # 1.5 px per axis of noise ~ 2.1 px per landmark
    ex = np.asarray(video.expression)
    assert ex.min() >= 0.0 and ex.max() <= 1.0


def test_bad_shapes(sequence):
    model, lms, _, _ = sequence
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        _fit(model, lms[0])
