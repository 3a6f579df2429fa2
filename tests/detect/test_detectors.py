"""Landmark detectors (the ``detect`` extra) on the staged real photos.

NME thresholds: measured values (percent of sqrt(w h) of the ground-truth box; see
scripts/tune_mediapipe_mapping.py) with margin. MediaPipe mapped to iBUG-68: 300-W sample 3.00,
einstein 6.54, AFLW frontal (00050, 02283, 03614) 2.22 / 2.98 / 2.95. dlib (upsample=0, as
tested): 300-W sample 1.66, AFLW frontal 2.58 / 2.98 / 3.14.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from jaxface.cli._common import read_image
from jaxface.detect import (
    DETECTORS,
    NoFaceError,
    detect_landmarks,
    get_detector,
)
from jaxface.detect.mapping import (
    COMMON_MEDIAPIPE_TO_IBUG68,
    IBUG68_MIRROR,
    MEDIAPIPE_TO_IBUG68,
    TUNED_LANDMARKS,
    mediapipe_to_ibug68,
)
from tests.detect import labelled


@pytest.fixture(scope="module")
def mediapipe():
    from jaxface.detect.mediapipe import MediaPipeDetector

    return MediaPipeDetector()


@pytest.fixture(scope="module")
def dlib():
    return get_detector("dlib", upsample=0)  # the faces here are large; upsampling is slow


def _check_detection(det, n: int, image_shape) -> None:
    h, w = image_shape[:2]
    assert det.landmarks.shape == (n, 2) and det.landmarks.dtype == np.float32
    assert det.confidence.shape == (n,)
    assert np.all((det.confidence >= 0) & (det.confidence <= 1))
    x0, y0, x1, y1 = det.box
    assert 0 <= x0 < x1 <= w + 1 and 0 <= y0 < y1 <= h + 1
    assert np.all(np.isfinite(det.landmarks))


def test_core_imports_without_detector_dependencies():
    code = ("import sys, jaxface, jaxface.detect, jaxface.detect.mediapipe, jaxface.detect.dlib, "
            "jaxface.detect.mapping; d = jaxface.detect.get_detector('mediapipe'); "
            "bad = [m for m in ('mediapipe', 'dlib', 'cv2') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_registry():
    assert set(DETECTORS) == {"mediapipe", "dlib", "mediapipe+dlib"}
    assert get_detector("mediapipe+dlib").name == "mediapipe+dlib"
    assert get_detector("mediapipe").scheme == "ibug68"
    assert get_detector("mediapipe", scheme="mediapipe468").scheme == "mediapipe468"
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        get_detector("nope")
    with pytest.raises(ValueError, match="unknown scheme"):
        get_detector("mediapipe", scheme="ibug51")


def test_mapping_table():
    m = np.asarray(MEDIAPIPE_TO_IBUG68)
    assert m.shape == (68,) and len(set(m.tolist())) == 68
    assert m.min() >= 0 and m.max() < 468
    for k, (common, tuned, before, after) in TUNED_LANDMARKS.items():
        assert COMMON_MEDIAPIPE_TO_IBUG68[k] == common and m[k] == tuned and after < before
    assert sum(a != b for a, b in zip(m, COMMON_MEDIAPIPE_TO_IBUG68, strict=True)) == len(
        TUNED_LANDMARKS)
    pts = np.arange(478 * 3, dtype=float).reshape(478, 3)
    np.testing.assert_array_equal(mediapipe_to_ibug68(pts), pts[m])
    with pytest.raises(ValueError, match="468"):
        mediapipe_to_ibug68(np.zeros((68, 2)))


def test_mapping_is_left_right_symmetric(data_dir):
    from jaxface.models import load_mediapipe

    canon = np.asarray(load_mediapipe(procrustes=False).mean)[:468]
    twin = np.linalg.norm((canon * [-1, 1, 1])[:, None] - canon[None], axis=-1).argmin(1)
    m = np.asarray(MEDIAPIPE_TO_IBUG68)
    np.testing.assert_array_equal(twin[m], m[list(IBUG68_MIRROR)])


def test_mediapipe_on_real_photos(mediapipe, data_dir):
    path, gt = labelled.sample_300w(data_dir)
    img = read_image(path)
    found = mediapipe(img, source=str(path))
    assert len(found) == 1
    _check_detection(found[0], 68, img.shape)
    assert found[0].scheme == "ibug68"
    assert labelled.nme_box(found[0].landmarks, gt) < 4.5

    gts = labelled.aflw_reannotated(data_dir)
    errs = []
    for name in labelled.AFLW_FRONTAL:
        det = detect_landmarks(read_image(data_dir / f"aflw2000-3d-subset/{name}.jpg"),
                               mediapipe, source=name)
        errs.append(labelled.nme_box(det.landmarks, gts[name]))
    assert np.mean(errs) < 4.0, errs


def test_mediapipe_small_face_by_tiles(mediapipe, data_dir):
    # einstein's face is ~85 px in a 817x1024 scan: only the tiled search finds it, together with
    # the smaller face of the man seated behind; the largest comes first
    path, gt = labelled.einstein(data_dir)
    img = read_image(path)
    found = mediapipe(img, source=str(path))
    assert len(found) == 2
    assert labelled.nme_box(found[0].landmarks, gt) < 9.0
    assert labelled.nme_box(found[1].landmarks, gt) > 100.0


def test_mediapipe468_matches_mapped_points(mediapipe, data_dir):
    from jaxface.detect.mediapipe import MediaPipeDetector

    img = read_image(data_dir / "aflw2000-3d-subset/image00050.jpg")
    raw = MediaPipeDetector(scheme="mediapipe468")(img)[0]
    _check_detection(raw, 468, img.shape)
    assert raw.scheme == "mediapipe468"
    mapped = mediapipe(img)[0]
    np.testing.assert_allclose(mapped.landmarks, raw.landmarks[list(MEDIAPIPE_TO_IBUG68)],
                               atol=1e-4)
    np.testing.assert_allclose(mapped.box, raw.box)  # the face box spans all 468 points


def test_dlib_on_real_photos(dlib, data_dir):
    path, gt = labelled.sample_300w(data_dir)
    img = read_image(path)
    det = detect_landmarks(img, dlib, source=str(path))
    _check_detection(det, 68, img.shape)
    assert labelled.nme_box(det.landmarks, gt) < 2.5
    gts = labelled.aflw_reannotated(data_dir)
    errs = [labelled.nme_box(detect_landmarks(read_image(
        data_dir / f"aflw2000-3d-subset/{name}.jpg"), dlib).landmarks, gts[name])
        for name in labelled.AFLW_FRONTAL]
    assert np.mean(errs) < 4.0, errs


@pytest.mark.parametrize("name", ["mediapipe", "dlib"])
def test_no_face_names_the_file(name):
    blank = np.full((200, 160, 3), 0.5, np.float32)
    with pytest.raises(NoFaceError, match=r"blank\.png") as err:
        detect_landmarks(blank, name, source="blank.png")
    assert err.value.source == "blank.png" and name in str(err.value)
