"""Face frontalisation: the fitted face rendered in a frontal pose with its photo texture."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass
from jaxface.camera import PerspectiveCamera, WeakPerspectiveCamera
from jaxface.edit.texture import Texture, render_textured
from jaxface.models.morphable import MorphableModel, vertices

Array = jax.Array

__all__ = ["EditOutput", "frontal_pose", "frontalize"]

# model frame (+y up, +z towards the viewer) -> camera frame (+y down, +z forward)
_MODEL_TO_CAMERA = np.diag([1.0, -1.0, -1.0]).astype(np.float32)


@pytree_dataclass
class EditOutput:
    """An edited image.

    Attributes:
      image: (H, W, 3) float32 result in [0, 1].
      mask: (H, W) float32, where the face was rendered (1) or the photo kept (0).
    """

    image: Any
    mask: Any


def frontal_pose(model_points: Any, fit: Any, image_size: tuple[int, int],
                 fit_image_size: tuple[int, int] | None = None) -> tuple[Array, Array, Any]:
    """A frontal pose and camera framing the face like the fit did.

    The face (``model_points``, model frame) looks straight at the camera, its centroid on the
    optical axis at the fit's distance; the focal length is the fit's, scaled by
    ``min(H / H0, W / W0)`` when ``image_size`` differs from ``fit_image_size`` (H0, W0).

    Returns:
      (rotation (3, 3), translation (3,), camera) for :func:`jaxface.edit.render_textured`.
    """
    h, w = (int(s) for s in image_size)
    pts = jnp.asarray(model_points, jnp.float32)
    rot = jnp.asarray(_MODEL_TO_CAMERA)
    centre = jnp.mean(pts, axis=0) @ rot.T
    cam = fit.camera
    scale = 1.0
    if fit_image_size is not None:
        scale = min(h / float(fit_image_size[0]), w / float(fit_image_size[1]))
    if isinstance(cam, PerspectiveCamera):
        # keep the fit's distance to the face centre
        fit_centre = jnp.mean(pts, axis=0) @ jnp.asarray(fit.rotation, jnp.float32).T \
            + jnp.asarray(fit.translation, jnp.float32)
        dist = jnp.linalg.norm(fit_centre)
        trans = jnp.array([0.0, 0.0, 1.0]) * dist - centre
        new_cam = PerspectiveCamera(fx=cam.fx * scale, fy=cam.fy * scale, cx=w / 2.0,
                                    cy=h / 2.0)
    elif isinstance(cam, WeakPerspectiveCamera):
        trans = jnp.array([0.0, 0.0, 1000.0]) - centre
        new_cam = WeakPerspectiveCamera(scale=cam.scale * scale, cx=w / 2.0, cy=h / 2.0)
    else:
        raise TypeError(f"frontalize needs a perspective or weak-perspective camera, got "
                        f"{type(cam).__name__}")
    return rot, trans, new_cam


def _mouth_triangles(model: MorphableModel) -> np.ndarray | None:
    """(F,) bool: the mouth-socket triangles (drawn dark in frontal renders), or None."""
    if not model.regions or "mouth" not in model.regions:
        return None
    return np.asarray(model.regions["mouth"], bool)[np.asarray(model.triangles)].all(axis=1)


_render_jit = jax.jit(render_textured, static_argnums=(4,))


def frontalize(model: MorphableModel, fit: Any, texture: Texture, image_size: tuple[int, int],
               *, fit_image_size: tuple[int, int] | None = None, neutral: bool = False,
               background: Any = 0.0) -> EditOutput:
    """Render the fitted identity (+ expression) frontally with its extracted texture.

    Args:
      model: the fitted model.
      fit: the fit (identity, expression, rotation, translation, camera).
      texture: a Texture from :func:`jaxface.edit.extract_texture` for this fit.
      image_size: (H, W) of the output.
      fit_image_size: (H0, W0) of the fitted photo, to keep the face's size in pixels
        proportional when ``image_size`` differs (None: use the fit's focal length as is).
      neutral: drop the expression (neutral face).
      background: scalar, (3,) or (H, W, 3).

    Returns:
      EditOutput(image (H, W, 3), mask (H, W)).
    """
    ex = None if (neutral or not model.n_expression) else jnp.asarray(fit.expression,
                                                                       jnp.float32)
    v_model = vertices(model, jnp.asarray(fit.identity, jnp.float32), ex)
    layout = texture.layout
    used = np.unique(np.asarray(layout.triangles))
    rot, trans, cam = frontal_pose(v_model[used], fit, image_size, fit_image_size)
    v_cam = v_model @ rot.T + trans
    rgb, mask, _ = _render_jit(v_cam, layout, texture.texture, cam, tuple(int(s) for s in
                                                                           image_size),
                               occluders=jnp.asarray(model.triangles, jnp.int32),
                               background=background, interior=_mouth_triangles(model))
    return EditOutput(image=rgb, mask=mask)
