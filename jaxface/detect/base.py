"""The common interface of landmark detectors."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from jaxface._image import to_uint8
from jaxface.errors import JaxfaceError


class NoFaceError(JaxfaceError):
    """The detector found no face in an image."""

    def __init__(self, source: str | None = None, detector: str = ""):
        self.source = source
        where = f" in {source}" if source else ""
        by = f" ({detector})" if detector else ""
        super().__init__(f"no face found{where}{by}")


class MissingDependencyError(JaxfaceError, ImportError):
    """An optional dependency (e.g. the ``detect`` extra) is not installed."""


@dataclasses.dataclass(frozen=True)
class Detection:
    """Landmarks of one face.

    Attributes:
      landmarks: (L, 2) float32 pixel coordinates (OpenCV convention: pixel centres at +0.5).
      confidence: (L,) float32 per-landmark confidence in [0, 1].
      box: (4,) float32 face box (x0, y0, x1, y1) in pixels.
      score: detector score of the face (larger is more certain; scale depends on the detector).
      scheme: the landmark scheme, e.g. "ibug68" or "mediapipe468".
    """

    landmarks: np.ndarray
    confidence: np.ndarray
    box: np.ndarray
    score: float
    scheme: str


class Detector(Protocol):
    """``detector(image, source=None) -> list[Detection]`` sorted by decreasing face size."""

    name: str
    scheme: str

    def __call__(self, image: np.ndarray, source: str | None = None) -> list[Detection]: ...


def as_uint8(image: np.ndarray) -> np.ndarray:
    """HxWx3 C-contiguous uint8 image from float [0, 1] or uint8 (grey and RGBA accepted)."""
    return to_uint8(image, layout="rgb")


def largest_first(dets: list[Detection]) -> list[Detection]:
    def area(d: Detection) -> float:
        x0, y0, x1, y1 = d.box
        return float((x1 - x0) * (y1 - y0))

    return sorted(dets, key=area, reverse=True)
