"""dlib's HOG face detector + 68-point shape predictor (iBUG-68 order).

Needs the ``detect`` extra (``dlib-bin`` and ``face-recognition-models``, whose wheel carries
``shape_predictor_68_face_landmarks.dat``; nothing is downloaded). dlib reports integer pixel
indices whose centre is the integer coordinate; we add 0.5 for the OpenCV convention.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxface.detect.base import Detection, MissingDependencyError, as_uint8, largest_first


@functools.cache
def _models():
    try:
        import dlib
        import face_recognition_models
    except ImportError as e:
        raise MissingDependencyError(
            "the dlib detector needs the 'detect' extra: pip install 'jaxface[detect]'") from e
    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(face_recognition_models.pose_predictor_model_location()))


class DlibDetector:
    """iBUG-68 landmarks from dlib. ``upsample`` > 0 finds smaller faces (slower)."""

    name = "dlib"
    scheme = "ibug68"

    def __init__(self, upsample: int = 1):
        self.upsample = int(upsample)

    def __call__(self, image: np.ndarray, source: str | None = None) -> list[Detection]:
        detector, predictor = _models()
        img = as_uint8(image)
        rects, scores, _ = detector.run(img, self.upsample, 0.0)
        out = []
        for rect, score in zip(rects, scores, strict=True):
            shape = predictor(img, rect)
            pts = np.array([[p.x, p.y] for p in shape.parts()], np.float32) + 0.5
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1],
                           np.float32)
            out.append(Detection(landmarks=pts, confidence=np.ones(68, np.float32), box=box,
                                 score=float(score), scheme=self.scheme))
        return largest_first(out)
