"""Evaluation: landmark NME, aligned vertex error, pose error, scan-to-mesh distances and the
readers of the evaluation data (AFLW2000-3D, 300-W ``.pts``)."""

from jaxface.eval.datasets import (
    AflwSample,
    DatasetFormatError,
    PtsSample,
    load_aflw2000,
    load_pts_samples,
    yaw_bin,
)
from jaxface.eval.metrics import (
    NORMALISATIONS,
    ChamferResult,
    VertexError,
    aligned_vertex_error,
    chamfer_scan_mesh,
    euler_error_degrees,
    landmark_rmse,
    nearest_point_distance,
    nme,
    point_triangle_distance,
    rotation_error_degrees,
    scan_to_mesh,
)

__all__ = [
    "NORMALISATIONS",
    "AflwSample",
    "ChamferResult",
    "DatasetFormatError",
    "PtsSample",
    "VertexError",
    "aligned_vertex_error",
    "chamfer_scan_mesh",
    "euler_error_degrees",
    "landmark_rmse",
    "load_aflw2000",
    "load_pts_samples",
    "nearest_point_distance",
    "nme",
    "point_triangle_distance",
    "rotation_error_degrees",
    "scan_to_mesh",
    "yaw_bin",
]
