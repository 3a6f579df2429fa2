"""iBUG ``.pts`` landmark files (300-W, Multi-PIE, menpo).

Format::

    version: 1
    n_points:  68
    {
    x y
    ...
    }

The iBUG annotations use 1-based pixel coordinates (the centre of the top-left pixel is
(1, 1)); jaxface uses OpenCV pixel coordinates with the centre of the top-left pixel at
(0.5, 0.5). ``read_pts`` therefore subtracts 0.5 and ``write_pts`` adds it back
(``one_based=False`` turns the shift off).
"""

from __future__ import annotations

import os

import numpy as np

from jaxface.errors import JaxfaceError

ONE_BASED_SHIFT = 0.5


class PtsFormatError(JaxfaceError, ValueError):
    """A ``.pts`` file cannot be parsed."""


def read_pts(path: str | os.PathLike, *, one_based: bool = True) -> np.ndarray:
    """Read an iBUG ``.pts`` file into (N, 2) float32 pixel coordinates (OpenCV convention)."""
    src = os.fspath(path)
    with open(src, encoding="utf-8") as fh:
        lines = [ln.strip() for ln in fh if ln.strip()]
    n = None
    try:
        start = lines.index("{")
        end = lines.index("}", start)
    except ValueError:
        raise PtsFormatError(f"{src}: missing '{{' or '}}' around the points") from None
    for ln in lines[:start]:
        if ln.lower().startswith("n_points"):
            try:
                n = int(ln.split(":", 1)[1])
            except (IndexError, ValueError):
                raise PtsFormatError(f"{src}: bad n_points line {ln!r}") from None
    try:
        pts = np.array([[float(t) for t in ln.split()[:2]] for ln in lines[start + 1:end]],
                       np.float32).reshape(-1, 2)
    except ValueError as e:
        raise PtsFormatError(f"{src}: bad point line ({e})") from None
    if n is not None and pts.shape[0] != n:
        raise PtsFormatError(f"{src}: n_points is {n} but {pts.shape[0]} points follow")
    return pts - (ONE_BASED_SHIFT if one_based else 0.0)


def write_pts(path: str | os.PathLike, points: np.ndarray, *, one_based: bool = True) -> None:
    """Write (N, 2) pixel coordinates (OpenCV convention) as an iBUG ``.pts`` file."""
    pts = np.asarray(points, np.float64).reshape(-1, 2) + (ONE_BASED_SHIFT if one_based else 0.0)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"version: 1\nn_points:  {pts.shape[0]}\n{{\n")
        for x, y in pts:
            fh.write(f"{x:.3f} {y:.3f}\n")
        fh.write("}\n")
