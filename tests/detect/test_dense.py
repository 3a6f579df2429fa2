"""Dense MediaPipe correspondence, mirrored MediaPipe detections, averaged detectors."""

from __future__ import annotations

import numpy as np
import pytest

from jaxface.detect.base import Detection
from jaxface.detect.combined import AveragedDetector, average_detections
from jaxface.detect.mapping import IBUG68_MIRROR, MEDIAPIPE_TO_IBUG68
from jaxface.models.correspondence import (
    _closest_barycentric,
    closest_points_on_mesh,
    similarity_fit,
)


def _brute_force(points, verts, tris):
    a, b, c = (verts[tris[:, i]] for i in range(3))
    w = _closest_barycentric(points[:, None, :], a, b, c, b - a, c - a)
    q = w[..., 0:1] * a + w[..., 1:2] * b + w[..., 2:3] * c
    return np.sqrt(np.min(np.sum((q - points[:, None]) ** 2, -1), axis=1))


def test_closest_points_on_mesh_exact():
    rng = np.random.default_rng(0)
    verts = rng.normal(size=(60, 3))
    tris = np.stack([rng.choice(60, 3, replace=False) for _ in range(80)])
    pts = rng.normal(size=(50, 3)) * 1.5
    f, w, d = closest_points_on_mesh(pts, verts, tris, chunk=7)
    # barycentric weights are a convex combination and reproduce the reported distance
    assert np.all(w >= -1e-12) and np.allclose(w.sum(1), 1.0)
    q = np.einsum("nk,nkc->nc", w, verts[tris[f]])
    np.testing.assert_allclose(np.linalg.norm(q - pts, axis=1), d, atol=1e-12)
    # the pruned search equals the exhaustive one
    np.testing.assert_allclose(d, _brute_force(pts, verts, tris), atol=1e-12)
    # no point of a triangle (dense barycentric samples) is nearer than the reported one
    g = np.linspace(0, 1, 21)
    uu, vv = np.meshgrid(g, g)
    keep = uu + vv <= 1
    bary = np.stack([1 - uu[keep] - vv[keep], uu[keep], vv[keep]], 1)
    samples = np.einsum("sk,tkc->tsc", bary, verts[tris]).reshape(-1, 3)
    sampled = np.min(np.linalg.norm(pts[:, None] - samples[None], axis=-1), axis=1)
    assert np.all(d <= sampled + 1e-12)
    # points on the surface have distance 0 on their own triangle (or one as near)
    on = np.einsum("k,nkc->nc", np.array([0.2, 0.3, 0.5]), verts[tris[:5]])
    _, _, d0 = closest_points_on_mesh(on, verts, tris)
    np.testing.assert_allclose(d0, 0.0, atol=1e-12)


def test_similarity_fit_recovers_transform():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    r = q * np.sign(np.linalg.det(q))
    y = 2.5 * x @ r.T + np.array([1.0, -2.0, 3.0])
    s, r_est, t = similarity_fit(x, y)
    assert s == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(r_est, r, atol=1e-12)
    np.testing.assert_allclose(t, [1.0, -2.0, 3.0], atol=1e-12)


def test_mirror_permutation(data_dir):
    from jaxface.models.mediapipe import load_mediapipe, mirror_permutation

    perm = mirror_permutation()
    assert perm.shape == (468,)
    np.testing.assert_array_equal(perm[perm], np.arange(468))
    canon = np.asarray(load_mediapipe(procrustes=False).mean)
    on_midline = np.abs(canon[:, 0]) < 1e-3
    np.testing.assert_array_equal(perm[on_midline], np.flatnonzero(on_midline))
    # consistent with the iBUG-68 mapping's own left-right symmetry
    m = np.asarray(MEDIAPIPE_TO_IBUG68)
    np.testing.assert_array_equal(perm[m], m[list(IBUG68_MIRROR)])
    from jaxface.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="symmetric"):
        mirror_permutation(canon + np.array([5.0, 0.0, 0.0]))


@pytest.fixture(scope="module")
def default_with_mediapipe(data_dir):
    from jaxface.models.correspondence import mediapipe_correspondence, with_mediapipe_landmarks
    from jaxface.models.ict import load_default

    model = load_default()
    corr = mediapipe_correspondence(model, icp_iterations=2)
    return model, corr, with_mediapipe_landmarks(model, corr)


def test_mediapipe_correspondence_on_default_model(default_with_mediapipe):
    from jaxface.models.morphable import landmarks

    model, corr, both = default_with_mediapipe
    assert corr.face_ids.shape == (468,) and corr.barycentric.shape == (468, 3)
    face = np.asarray(model.regions["face"], bool)
    assert np.all(face[np.asarray(model.triangles)[corr.face_ids]])
    assert corr.rms_mm < 1.0 and corr.distance_mm.max() < 3.0
    # the MediaPipe vertices of the 51 inner iBUG landmarks land near the model's own iBUG
    # landmarks (a few mm: the two schemes place e.g. brow points slightly differently)
    mean = np.asarray(model.mean)
    mp_pts = np.asarray(landmarks(both, mean, "mediapipe468"))
    ib = np.asarray(landmarks(model, mean, "ibug68"))
    d = np.linalg.norm(mp_pts[np.asarray(MEDIAPIPE_TO_IBUG68)] - ib, axis=1)[17:]
    assert np.median(d) < 3.0, d
    # the combined set is iBUG-68 then the 468 points, with the iBUG-68 contour
    comb = np.asarray(landmarks(both, mean, "ibug68+mediapipe468"))
    np.testing.assert_allclose(comb[:68], ib, atol=1e-4)
    np.testing.assert_allclose(comb[68:], mp_pts, atol=1e-4)
    np.testing.assert_array_equal(both.contours["ibug68+mediapipe468"].candidates,
                                  model.contours["ibug68"].candidates)
    marked = corr.landmark_set(model, max_distance_mm=0.5)
    assert 0 < int(np.sum(~marked.valid)) < 468


def test_fit_mediapipe_dense_recovers_synthetic_face(default_with_mediapipe):
    import jax.numpy as jnp

    from jaxface.camera import PerspectiveCamera, project
    from jaxface.detect.dense import fit_mediapipe_dense
    from jaxface.fit.landmarks import MODEL_TO_CAMERA
    from jaxface.geometry import axis_angle_to_matrix
    from jaxface.models.morphable import landmarks, restrict, vertices

    _, _, both = default_with_mediapipe
    model = restrict(both, np.asarray(both.regions["face"], bool))
    rng = np.random.default_rng(3)
    ident = rng.normal(size=model.n_identity).astype(np.float32) * 0.5 * np.asarray(
        model.identity_std)
    verts = vertices(model, jnp.asarray(ident))
    rot = axis_angle_to_matrix(jnp.array([0.1, 0.3, 0.05])) @ jnp.asarray(MODEL_TO_CAMERA)
    cam = PerspectiveCamera(fx=450.0, fy=450.0, cx=225.0, cy=225.0)
    t = jnp.array([5.0, -3.0, 600.0])
    uv = np.asarray(project(cam, landmarks(model, verts, "ibug68+mediapipe468") @ rot.T + t))
    res = fit_mediapipe_dense(model, uv[68:], (450, 450), ibug68=uv[:68])
    assert res.landmarks2d.shape == (68, 2) and res.residuals.shape == (68,)
    # the inner 51 (the jawline slides along its contour candidates)
    err = np.linalg.norm(np.asarray(res.landmarks2d)[17:] - uv[17:68], axis=1)
    assert np.mean(err) < 0.6, err
    with pytest.raises(ValueError, match="468"):
        fit_mediapipe_dense(model, uv[:68], (450, 450))


def _det(points, box=None, conf=1.0):
    pts = np.asarray(points, np.float32)
    b = np.concatenate([pts.min(0), pts.max(0)]) if box is None else np.asarray(box)
    return Detection(landmarks=pts, confidence=np.full(len(pts), conf, np.float32),
                     box=b.astype(np.float32), score=1.0, scheme="ibug68")


def test_average_detections_pairs_by_overlap():
    rng = np.random.default_rng(2)
    face_a = rng.uniform(100, 200, size=(68, 2))
    face_b = rng.uniform(400, 460, size=(68, 2))
    first = [_det(face_a), _det(face_b)]
    shifted = _det(face_a + 2.0, conf=0.5)
    far = _det(face_a + 500.0)
    out = average_detections(first, [far, shifted])
    assert len(out) == 2
    # largest face first: face_a's box is larger
    np.testing.assert_allclose(out[0].landmarks, face_a + 1.0, atol=1e-4)
    np.testing.assert_allclose(out[0].confidence, 0.75)
    # face_b has no partner: kept as it was
    np.testing.assert_allclose(out[1].landmarks, face_b, atol=1e-4)
    with pytest.raises(ValueError, match="cannot average"):
        average_detections(first, [_det(face_a[:5])])


def test_averaged_detector_rejects_other_schemes():
    class Raw:
        name, scheme = "raw", "mediapipe468"

        def __call__(self, image, source=None):
            return []

    class Ibug:
        name, scheme = "ib", "ibug68"

        def __call__(self, image, source=None):
            return [_det(np.arange(136, dtype=float).reshape(68, 2))]

    with pytest.raises(ValueError, match="not ibug68"):
        AveragedDetector(Ibug(), Raw())
    both = AveragedDetector(Ibug(), Ibug())
    assert both.name == "ib+ib"
    np.testing.assert_allclose(both(np.zeros((4, 4, 3)))[0].landmarks,
                               np.arange(136).reshape(68, 2))


def test_mediapipe_flip_is_mirror_consistent(data_dir):
    """With ``flip=True`` the detections of a photo and of its mirror image are mirror images
    of each other (both average the same two graph runs)."""
    from jaxface.cli._common import read_image
    from jaxface.detect.mediapipe import MediaPipeDetector

    img = read_image(data_dir / "aflw2000-3d-subset/image02283.jpg")
    w = img.shape[1]
    det = MediaPipeDetector()
    a = det(img)[0].landmarks
    b = det(np.ascontiguousarray(img[:, ::-1]))[0].landmarks
    b = b[list(IBUG68_MIRROR)]
    b[:, 0] = w - b[:, 0]
    np.testing.assert_allclose(a, b, atol=0.05)
    plain = MediaPipeDetector(flip=False, refine_landmarks=True)(img)[0].landmarks
    assert 0.0 < np.mean(np.linalg.norm(plain - a, axis=1)) < 5.0
