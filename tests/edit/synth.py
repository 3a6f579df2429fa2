"""Synthetic photos of the default model with a known per-vertex colour pattern."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxface.camera import default_camera
from jaxface.edit import SavedFit
from jaxface.fit import MODEL_TO_CAMERA
from jaxface.geometry import axis_angle_to_matrix
from jaxface.models import load_default, vertices
from jaxface.render.pipeline import render_mesh
from jaxface.render.shading import sh_ambient

SIZE = (112, 112)
TEX = 96


def pattern(points: np.ndarray, symmetric: bool = False) -> np.ndarray:
    """(V, 3) smooth colours of model-frame points (mirror-symmetric in x when asked)."""
    x = np.abs(points[:, 0]) if symmetric else points[:, 0]
    y, z = points[:, 1], points[:, 2]
    return np.stack([0.5 + 0.35 * np.sin(x / 18.0 + 0.3),
                     0.5 + 0.35 * np.cos(y / 23.0),
                     0.5 + 0.3 * np.sin(z / 15.0 + 0.05 * y)], 1).astype(np.float32)


def make_fit(model, yaw: float = 0.0, expression=None) -> SavedFit:
    rot = np.asarray(axis_angle_to_matrix(jnp.array([0.0, yaw, 0.0])) @ MODEL_TO_CAMERA)
    ex = np.zeros(model.n_expression, np.float32) if expression is None else expression
    return SavedFit(identity=np.zeros(model.n_identity, np.float32), expression=ex,
                    rotation=rot.astype(np.float32),
                    translation=np.array([0.0, -15.0, 520.0], np.float32),
                    camera=default_camera(SIZE, 30.0))


def photo(model, fit, colours, background=0.1) -> np.ndarray:
    """Render ``colours`` (V, 3) unlit (constant unit light) at the fit's pose."""
    v = vertices(model, fit.identity, fit.expression)
    vc = v @ jnp.asarray(fit.rotation).T + jnp.asarray(fit.translation)
    out = render_mesh(vc, model.triangles, fit.camera, SIZE, albedo=colours,
                      sh=sh_ambient(1.0), background=background)
    return np.asarray(out.rgb)


_MODEL = []


def default_model():
    if not _MODEL:
        _MODEL.append(load_default())
    return _MODEL[0]
