"""MediaPipe FaceMesh landmarks (468 points, or iBUG-68 through a fixed correspondence).

Needs the ``detect`` extra (``mediapipe==0.10.14``). We use the legacy
``mediapipe.python.solutions.face_mesh`` graph with ``static_image_mode=True``: its face
detector and mesh models ship inside the wheel, so nothing is downloaded.

Coordinates. MediaPipe reports each point normalised by the image size, ``x_n = x / W`` and
``y_n = y / H``, where (x, y) are continuous image coordinates whose origin is the top-left
corner of the top-left pixel. ``x_n * W`` is therefore already in the OpenCV convention that
jaxface uses (pixel centres at integer + 0.5); unlike dlib's integer pixel indices, no half-pixel
shift applies.

Confidence. FaceMesh gives no per-point confidence; where a point carries MediaPipe's
``presence`` (or ``visibility``) field we use it, otherwise 1. FaceMesh reports no per-face
score either: faces below ``min_detection_confidence`` are not returned at all, and ``score``
is 1.

Small faces. MediaPipe's face detector (the short-range BlazeFace) sees the image at 128 x 128
pixels and misses faces smaller than about a tenth of the image. When the whole image yields no
face, the detector searches again in overlapping square tiles of half and then a quarter of the
longer image side (stride half a tile, so any face smaller than half a tile lies wholly inside
one), stopping at the first scale that finds a face; duplicates from overlapping tiles are merged
by box overlap, keeping the copy farthest from its tile's border.

Refinement and mirroring (both on by default). Measured on the 11 AFLW2000-3D subset photos
(mean NME of the iBUG-68 points against ``pt3d_68``, bounding-box normalisation;
``benchmarks/bench_detect_fit.py``):
``refine_landmarks=True`` runs FaceMesh's attention model, which refines the points around the eyes
and lips (5.20 % -> 4.92 %); ``flip=True`` also runs the graph on the mirror image and averages each
point with its mirror twin's (``IBUG68_MIRROR`` for iBUG-68; for the 468 points
:func:`jaxface.models.mediapipe.mirror_permutation`, which reads MediaPipe's canonical mesh from
``$JAXFACE_DATA``): 4.92 % -> 4.75 %. Mirroring halves the speed.

Schemes. ``MediaPipeDetector()`` (``scheme="ibug68"``) returns the 68 iBUG landmarks picked by
``jaxface.detect.mapping.MEDIAPIPE_TO_IBUG68``; ``scheme="mediapipe468"`` returns the raw 468
points in MediaPipe's order.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from jaxface.detect.base import Detection, MissingDependencyError, as_uint8, largest_first
from jaxface.detect.mapping import IBUG68_MIRROR, MEDIAPIPE_TO_IBUG68

SCHEMES = ("ibug68", "mediapipe468")
_MIN_TILE = 128  # the face detector's input size; smaller tiles only upsample


def _face_mesh_module():
    # quieten the C++ (glog/absl) start-up chatter of the MediaPipe graph unless asked for
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as e:
        raise MissingDependencyError(
            "the mediapipe detector needs the 'detect' extra: pip install 'jaxface[detect]' "
            "(mediapipe==0.10.14)") from e
    return face_mesh


def _confidence(landmarks) -> np.ndarray:
    conf = np.ones(len(landmarks), np.float32)
    for i, p in enumerate(landmarks):
        for field in ("presence", "visibility"):
            if p.HasField(field):
                conf[i] = float(getattr(p, field))
                break
    return np.clip(conf, 0.0, 1.0)


class MediaPipeDetector:
    """MediaPipe FaceMesh as a jaxface detector.

    Args:
      scheme: ``"ibug68"`` (default, 68 points in iBUG order) or ``"mediapipe468"``.
      max_faces: the most faces reported per image.
      min_detection_confidence: MediaPipe's face-detector threshold.
      tile_fractions: tile sides (fractions of the longer image side) searched, in order, when
        the whole image has no face; ``()`` turns the tiled search off.
      refine_landmarks: use FaceMesh's attention model (refined eyes and lips).
      flip: average with the detections on the mirror image (test-time augmentation).
    """

    name = "mediapipe"

    def __init__(self, scheme: str = "ibug68", max_faces: int = 4,
                 min_detection_confidence: float = 0.5,
                 tile_fractions: tuple[float, ...] = (0.5, 0.25),
                 refine_landmarks: bool = True, flip: bool = True):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; choose from {SCHEMES}")
        self.scheme = scheme
        self.max_faces = int(max_faces)
        self.min_detection_confidence = float(min_detection_confidence)
        self.tile_fractions = tuple(float(f) for f in tile_fractions)
        self.refine_landmarks = bool(refine_landmarks)
        self.flip = bool(flip)
        self._mirror: np.ndarray | None = None
        self._mesh = None
        self._lock = threading.Lock()

    def _graph(self):
        if self._mesh is None:
            self._mesh = _face_mesh_module().FaceMesh(
                static_image_mode=True, max_num_faces=self.max_faces,
                refine_landmarks=self.refine_landmarks,
                min_detection_confidence=self.min_detection_confidence)
        return self._mesh

    def close(self) -> None:
        """Release the MediaPipe graph (it is re-created on the next call)."""
        with self._lock:
            if self._mesh is not None:
                self._mesh.close()
                self._mesh = None

    def _run(self, img: np.ndarray) -> list[np.ndarray]:
        """(468, 3) arrays (x, y in pixels of ``img``, confidence) of the faces in ``img``."""
        h, w = img.shape[:2]
        with self._lock, warnings.catch_warnings():
            # mediapipe 0.10.14 calls a protobuf API that newer protobuf deprecates
            warnings.filterwarnings("ignore", message=".*GetPrototype", category=UserWarning)
            found = self._graph().process(np.ascontiguousarray(img))
        out = []
        for face in found.multi_face_landmarks or []:
            lms = face.landmark
            pts = np.array([[p.x * w, p.y * h] for p in lms], np.float32)[:468]
            out.append(np.concatenate([pts, _confidence(lms)[:468, None]], axis=1))
        return out

    def _tiled(self, img: np.ndarray) -> list[np.ndarray]:
        h, w = img.shape[:2]
        for frac in self.tile_fractions:
            side = int(round(max(h, w) * frac))
            if side < _MIN_TILE or side >= max(h, w):
                continue
            stride = max(side // 2, 1)
            ys = sorted({min(y, max(h - side, 0)) for y in range(0, max(h - side, 0) + stride,
                                                                 stride)})
            xs = sorted({min(x, max(w - side, 0)) for x in range(0, max(w - side, 0) + stride,
                                                                 stride)})
            hits: list[tuple[float, np.ndarray]] = []
            for y0 in ys:
                for x0 in xs:
                    crop = img[y0:y0 + side, x0:x0 + side]
                    ch, cw = crop.shape[:2]
                    for face in self._run(crop):
                        b = np.concatenate([face[:, :2].min(0), face[:, :2].max(0)])
                        margin = float(min(b[0], b[1], cw - b[2], ch - b[3]))
                        face = face.copy()
                        face[:, 0] += x0
                        face[:, 1] += y0
                        hits.append((margin, face))
            kept: list[np.ndarray] = []
            for _, face in sorted(hits, key=lambda t: -t[0]):
                if all(_iou(_box(face), _box(k)) < 0.3 for k in kept):
                    kept.append(face)
            if kept:
                return kept
        return []

    def __call__(self, image: np.ndarray, source: str | None = None) -> list[Detection]:
        """Faces in ``image`` (HxWx3 float [0, 1] or uint8 RGB), largest first.

        Returns:
          a list of Detection with (68, 2) or (468, 2) float32 landmarks in pixels (an empty
          list when there is no face; ``detect_landmarks`` turns that into NoFaceError).
        """
        img = as_uint8(image)
        faces = self._run(img) or self._tiled(img)
        boxes = [_box(f) for f in faces]
        if self.scheme == "ibug68":
            faces = [f[np.asarray(MEDIAPIPE_TO_IBUG68)] for f in faces]
        if self.flip and faces:
            faces = self._flip_average(img, faces)
        out = []
        for face, box in zip(faces, boxes, strict=True):
            pts, conf = face[:, :2], face[:, 2]
            out.append(Detection(landmarks=np.ascontiguousarray(pts, np.float32),
                                 confidence=np.ascontiguousarray(conf, np.float32), box=box,
                                 score=1.0, scheme=self.scheme))
        return largest_first(out)


    def _flip_average(self, img: np.ndarray, faces: list[np.ndarray]) -> list[np.ndarray]:
        """Average each face with its detection in the mirror image (same landmark box,
        IoU > 0.5); faces without a mirror match are kept as they are. (L, 3) arrays (x, y,
        confidence) in the detector's scheme."""
        w = img.shape[1]
        flipped = np.ascontiguousarray(img[:, ::-1])
        mirrored = self._run(flipped) or self._tiled(flipped)
        if not mirrored:
            return faces
        if self.scheme == "ibug68":  # map first, then swap left and right iBUG twins
            perm = np.asarray(MEDIAPIPE_TO_IBUG68)[np.asarray(IBUG68_MIRROR)]
        else:
            perm = self._mirror_perm()
        back = []
        for f in mirrored:
            f = f.copy()
            f[:, 0] = w - f[:, 0]
            back.append(f[perm])
        out = []
        for face in faces:
            ious = [_iou(_box(face), _box(m)) for m in back]
            k = int(np.argmax(ious))
            out.append(0.5 * (face + back[k]) if ious[k] > 0.5 else face)
        return out

    def _mirror_perm(self) -> np.ndarray:
        if self._mirror is None:
            from jaxface.models.mediapipe import mirror_permutation

            self._mirror = mirror_permutation()
        return self._mirror


def _box(face: np.ndarray) -> np.ndarray:
    return np.concatenate([face[:, :2].min(0), face[:, :2].max(0)]).astype(np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
