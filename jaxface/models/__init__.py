"""Morphable models: the ``MorphableModel`` pytree, its pure functions, and model loaders."""

from jaxface.models._formats import eos_landmarks, eos_mapping_path
from jaxface.models.articulation import (
    Articulation,
    articulate,
    forward_kinematics,
    linear_blend_skinning,
    pose_feature,
)
from jaxface.models.bfm import load_bfm2009, load_bfm2017, load_deep3d_bfm
from jaxface.models.build import (
    add_expression,
    build_bilinear_model,
    build_expression_model,
    build_pca_model,
    generalized_procrustes,
)
from jaxface.models.facewarehouse import (
    BilinearModel,
    bilinear_to_linear,
    bilinear_vertices,
    load_facewarehouse_core,
    make_bilinear_model,
)
from jaxface.models.flame import (
    FlameArticulation,
    load_flame,
    load_flame_articulation,
    load_flame_landmarks,
    load_flame_with_articulation,
)
from jaxface.models.gnm import load_gnm
from jaxface.models.ict import load_default, load_ict
from jaxface.models.mediapipe import load_mediapipe, load_mediapipe_procrustes_weights
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
from jaxface.models.registry import add_model, jaxface_home, list_models, load_any, load_model
from jaxface.models.sfm import load_sfm

__all__ = [
    "Articulation",
    "add_expression",
    "add_model",
    "build_bilinear_model",
    "build_expression_model",
    "build_pca_model",
    "generalized_procrustes",
    "jaxface_home",
    "list_models",
    "load_any",
    "load_model",
    "articulate",
    "forward_kinematics",
    "linear_blend_skinning",
    "pose_feature",
    "BilinearModel",
    "ContourSet",
    "FlameArticulation",
    "LandmarkSet",
    "MorphableModel",
    "bilinear_to_linear",
    "bilinear_vertices",
    "eos_landmarks",
    "eos_mapping_path",
    "landmarks",
    "load_bfm2009",
    "load_bfm2017",
    "load_deep3d_bfm",
    "load_default",
    "load_facewarehouse_core",
    "load_flame",
    "load_flame_articulation",
    "load_flame_landmarks",
    "load_flame_with_articulation",
    "load_gnm",
    "load_ict",
    "load_mediapipe",
    "load_mediapipe_procrustes_weights",
    "load_npz",
    "load_sfm",
    "make_bilinear_model",
    "make_model",
    "random_coefficients",
    "restrict",
    "save_npz",
    "standardized",
    "truncate",
    "validate",
    "vertices",
]
