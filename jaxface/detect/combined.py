"""Two iBUG-68 detectors averaged (``get_detector("mediapipe+dlib")``).

MediaPipe FaceMesh and dlib err differently (MediaPipe regresses a whole mesh, dlib's regression
trees follow image edges), so the mean of their iBUG-68 points is more accurate than either
alone. Measured on the 11 AFLW2000-3D subset photos (mean NME of the raw iBUG-68 points
against ``pt3d_68``, bounding-box normalisation, ``benchmarks/bench_detect_fit.py``): MediaPipe
(refined, mirrored) 4.75 %, the average with dlib 4.60 %; dlib alone finds 8 of the 11 faces
(4.87 % on those).

Faces are paired by the overlap of their landmark boxes (IoU > 0.3); a face that only the first
detector finds is reported as that detector saw it, so the combination finds at least the faces
of its first detector.
"""

from __future__ import annotations

import numpy as np

from jaxface.detect.base import Detection, Detector, largest_first


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    ih = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    inter = iw * ih
    union = float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])) - inter
    return inter / union if union > 0 else 0.0


def _landmark_box(d: Detection) -> np.ndarray:
    return np.concatenate([d.landmarks.min(0), d.landmarks.max(0)])


def average_detections(first: list[Detection], second: list[Detection],
                       min_iou: float = 0.3) -> list[Detection]:
    """Pair each face of ``first`` with the most overlapping face of ``second`` (landmark-box
    IoU above ``min_iou``) and average their landmarks and confidences; unpaired faces of
    ``first`` are kept unchanged. All detections must share one scheme and landmark count."""
    out = []
    for d in first:
        best, best_iou = None, min_iou
        for e in second:
            if e.landmarks.shape != d.landmarks.shape:
                raise ValueError(f"cannot average {d.scheme} {d.landmarks.shape} and "
                                 f"{e.scheme} {e.landmarks.shape} landmarks")
            iou = _iou(_landmark_box(d), _landmark_box(e))
            if iou > best_iou:
                best, best_iou = e, iou
        if best is None:
            out.append(d)
            continue
        out.append(Detection(
            landmarks=(0.5 * (d.landmarks + best.landmarks)).astype(np.float32),
            confidence=(0.5 * (d.confidence + best.confidence)).astype(np.float32),
            box=np.concatenate([np.minimum(d.box[:2], best.box[:2]),
                                np.maximum(d.box[2:], best.box[2:])]).astype(np.float32),
            score=d.score, scheme=d.scheme))
    return largest_first(out)


class AveragedDetector:
    """The mean of two iBUG-68 detectors' landmarks, face by face (see the module)."""

    scheme = "ibug68"

    def __init__(self, first: Detector, second: Detector):
        for det in (first, second):
            if det.scheme != "ibug68":
                raise ValueError(f"detector {det.name!r} reports {det.scheme!r}, not ibug68")
        self.first, self.second = first, second
        self.name = f"{first.name}+{second.name}"

    def __call__(self, image: np.ndarray, source: str | None = None) -> list[Detection]:
        return average_detections(self.first(image, source=source),
                                  self.second(image, source=source))
