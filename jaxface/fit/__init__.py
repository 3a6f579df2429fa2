"""Fitting a morphable model to images: landmark energies, solvers, results."""

from jaxface.fit.landmarks import (
    MODEL_TO_CAMERA,
    FitConfig,
    FitResult,
    fit_landmarks,
    fitted_landmarks3d,
    model_vertices_camera,
)
from jaxface.fit.results import result_to_json
from jaxface.fit.sequence import fit_landmarks_sequence

__all__ = [
    "MODEL_TO_CAMERA",
    "FitConfig",
    "FitResult",
    "fit_landmarks",
    "fit_landmarks_sequence",
    "fitted_landmarks3d",
    "model_vertices_camera",
    "result_to_json",
]
