"""Morphable models: the ``MorphableModel`` pytree, its pure functions, and model loaders."""

from jaxface.models.ict import load_default, load_ict
from jaxface.models.morphable import (
    ContourSet,
    LandmarkSet,
    MorphableModel,
    landmarks,
    load_npz,
    make_model,
    random_coefficients,
    restrict,
    save_npz,
    standardized,
    truncate,
    validate,
    vertices,
)

__all__ = [
    "ContourSet",
    "LandmarkSet",
    "MorphableModel",
    "landmarks",
    "load_default",
    "load_ict",
    "load_npz",
    "make_model",
    "random_coefficients",
    "restrict",
    "save_npz",
    "standardized",
    "truncate",
    "validate",
    "vertices",
]
