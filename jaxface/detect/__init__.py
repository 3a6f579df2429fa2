"""Landmark detectors (the ``detect`` extra) and landmark file I/O.

The core package imports without the extra; a detector raises ``MissingDependencyError`` when
it is used without its dependency.
"""

from __future__ import annotations

import functools

from jaxface.detect.base import (
    Detection,
    Detector,
    MissingDependencyError,
    NoFaceError,
    as_uint8,
)
from jaxface.detect.pts import PtsFormatError, read_pts, write_pts

DETECTORS = ("mediapipe", "dlib", "mediapipe+dlib")


def get_detector(name: str = "dlib", **options) -> Detector:
    """A detector by name: ``"dlib"`` (iBUG-68), ``"mediapipe"`` (iBUG-68 through
    ``jaxface.detect.mapping``; ``scheme="mediapipe468"`` for the raw points) or
    ``"mediapipe+dlib"`` (the two averaged, :mod:`jaxface.detect.combined`).

    ``options`` go to the detector's constructor (for ``"mediapipe+dlib"``: to MediaPipe's).
    Neither dependency is imported before the detector is first called.
    """
    if name == "dlib":
        from jaxface.detect.dlib import DlibDetector

        return DlibDetector(**options)
    if name == "mediapipe":
        from jaxface.detect.mediapipe import MediaPipeDetector

        return MediaPipeDetector(**options)
    if name == "mediapipe+dlib":
        from jaxface.detect.combined import AveragedDetector
        from jaxface.detect.dlib import DlibDetector
        from jaxface.detect.mediapipe import MediaPipeDetector

        return AveragedDetector(MediaPipeDetector(**options), DlibDetector())
    raise ValueError(f"unknown detector {name!r}; choose from {DETECTORS}")


@functools.cache
def _shared_detector(name: str) -> Detector:
    """One detector per name, so repeated calls reuse its loaded models."""
    return get_detector(name)


def detect_landmarks(image, detector: str | Detector = "dlib", source: str | None = None
                     ) -> Detection:
    """The landmarks of the largest face in ``image``; raises NoFaceError naming ``source``."""
    det = _shared_detector(detector) if isinstance(detector, str) else detector
    found = det(image, source=source)
    if not found:
        raise NoFaceError(source, det.name)
    return found[0]


__all__ = [
    "DETECTORS",
    "Detection",
    "Detector",
    "MissingDependencyError",
    "NoFaceError",
    "PtsFormatError",
    "as_uint8",
    "detect_landmarks",
    "get_detector",
    "read_pts",
    "write_pts",
]
