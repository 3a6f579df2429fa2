"""Fitting a morphable model to images: landmark energies, solvers, results."""

from jaxface.fit.albedo import (
    AlbedoModel,
    albedo_model,
    albedo_vertices,
    fit_free_albedo,
    refine_free_albedo,
)
from jaxface.fit.landmarks import (
    MODEL_TO_CAMERA,
    FitConfig,
    FitResult,
    fit_landmarks,
    fitted_landmarks3d,
    model_vertices_camera,
)
from jaxface.fit.linear import LinearFitResult, fit_linear, linear_to_perspective_init
from jaxface.fit.photometric import (
    PhotometricConfig,
    PhotometricResult,
    fit_photometric,
    gradient_correlation,
    photometric_result_to_json,
)
from jaxface.fit.results import result_to_json
from jaxface.fit.sequence import fit_landmarks_sequence

__all__ = [
    "MODEL_TO_CAMERA",
    "AlbedoModel",
    "PhotometricConfig",
    "PhotometricResult",
    "albedo_model",
    "albedo_vertices",
    "fit_photometric",
    "gradient_correlation",
    "LinearFitResult",
    "fit_linear",
    "linear_to_perspective_init",
    "photometric_result_to_json",
    "fit_free_albedo",
    "refine_free_albedo",
    "FitConfig",
    "FitResult",
    "fit_landmarks",
    "fit_landmarks_sequence",
    "fitted_landmarks3d",
    "model_vertices_camera",
    "result_to_json",
]
