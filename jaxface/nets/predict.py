"""Prediction: photo -> crop -> encoder -> model parameters in the photo's camera.

:func:`predict_crops` runs the encoder on a batch of crops (jit-compiled, one call);
:func:`predict_image` crops a photo around its landmarks (given, or from a detector), predicts,
and returns the parameters in the photo's camera (``fx = fy = max(H, W)`` centred, as
:func:`jaxface.fit.fit_landmarks` assumes) as a :class:`~jaxface.fit.FitResult`, so everything
that consumes fits (``result_to_json``, exports, ``fit_landmarks(init=...)``) takes it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxface.camera import PerspectiveCamera
from jaxface.fit.landmarks import FitResult
from jaxface.nets.data import crop_camera_of, crop_to_box, landmark_box
from jaxface.nets.decoder import FaceDecoder, Prediction, decode, make_decoder, prediction_landmarks
from jaxface.nets.encoder import Encoder

Array = jax.Array

__all__ = ["Predictor", "load_predictor", "predict_crops", "predict_image", "to_fit_result"]


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A loaded encoder, its decoder and a compiled forward pass (see :func:`load_predictor`)."""

    encoder: Encoder
    decoder: FaceDecoder
    meta: dict[str, Any]
    forward: Any  # (B, S, S, 3) -> (B, P), jit-compiled

    @property
    def image_size(self) -> int:
        return self.decoder.image_size


def load_predictor(checkpoint: Any, model: Any = None) -> Predictor:
    """Load a checkpoint (run directory, step folder or exported ``.npz``) for prediction.

    ``model`` defaults to the model the network was trained with (``meta["decoder"]["model"]``).
    """
    from jaxface.models import load_model
    from jaxface.nets.checkpoint import CheckpointError, load_encoder

    enc, meta = load_encoder(checkpoint)
    d = meta["decoder"]
    if model is None:
        model = load_model(d.get("model", "default"))
    if model.name != d.get("model_name", model.name):
        raise CheckpointError(f"checkpoint was trained for model {d['model_name']!r}, "
                              f"got {model.name!r}")
    dec = make_decoder(model, int(d["image_size"]), n_identity=d.get("n_identity"))
    if dec.size != enc.config.output_size:
        raise CheckpointError(f"checkpoint outputs {enc.config.output_size} values but the "
                              f"decoder of {model.name!r} needs {dec.size}")
    graphdef, state = nnx.split(enc)
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
    return Predictor(encoder=enc, decoder=dec, meta=meta,
                     forward=lambda x: fwd(state, x))


def predict_crops(predictor: Predictor, crops: Any, cameras: PerspectiveCamera) -> Prediction:
    """(B, S, S, 3) crops with their (B,) cameras -> batched Prediction."""
    raw = predictor.forward(crops)
    return jax.vmap(lambda r, c: decode(predictor.decoder, r, c))(raw, cameras)


def predict_image(predictor: Predictor, image: Any, landmarks: Any,
                  focal: float | None = None) -> FitResult:
    """Predict the face whose 68 iBUG ``landmarks`` (pixels; NaN rows allowed) are given.

    Args:
      image: (H, W, 3) float in [0, 1].
      landmarks: (68, 2) landmarks of the face (a detector's or annotated); they choose the
        crop and give the result's residuals.
      focal: the photo's focal length in pixels (default ``max(H, W)``).

    Returns:
      FitResult in the photo's camera (``iterations`` 0: no optimisation ran).
    """
    img = jnp.asarray(image, jnp.float32)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got {tuple(img.shape)}")
    lm = jnp.asarray(landmarks, jnp.float32)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be (68, 2), got {tuple(lm.shape)}")
    h, w = img.shape[:2]
    f = float(max(h, w)) if focal is None else float(focal)
    cam = PerspectiveCamera(fx=jnp.float32(f), fy=jnp.float32(f), cx=jnp.float32(w / 2),
                            cy=jnp.float32(h / 2))
    s = predictor.image_size
    box = landmark_box(lm)
    crop = crop_to_box(img, box, s)
    ccam = crop_camera_of(cam, box, s)
    pred = jax.tree.map(lambda a: a[0],
                        predict_crops(predictor, crop[None], jax.tree.map(lambda a: a[None],
                                                                          ccam)))
    # the crop camera is the photo's camera up to a pixel scale and shift: same 3D pose
    pred = dataclasses.replace(pred, camera=cam)
    return to_fit_result(predictor.decoder, pred, lm)


def to_fit_result(dec: FaceDecoder, pred: Prediction, observed: Any = None) -> FitResult:
    """A Prediction as a FitResult (residuals against ``observed`` (L, 2) landmarks, else NaN)."""
    uv = prediction_landmarks(dec, pred)
    if observed is None:
        res = jnp.full((uv.shape[0],), jnp.nan)
    else:
        obs = jnp.asarray(observed, jnp.float32)
        res = jnp.where(jnp.all(jnp.isfinite(obs), -1), jnp.linalg.norm(uv - obs, axis=-1),
                        jnp.nan)
    lm = dec.model.landmarks["ibug68"]
    ids = np.asarray(lm.indices)[:, 0]
    vid = np.where(np.asarray(lm.weights)[:, 0] == 1.0, ids, -1)
    return FitResult(identity=pred.identity, expression=pred.expression, rotation=pred.rotation,
                     translation=pred.translation, camera=pred.camera, landmarks2d=uv,
                     residuals=res, landmark_vertex_ids=jnp.asarray(vid, jnp.int32),
                     cost=jnp.float32(0.0), iterations=jnp.int32(0), converged=jnp.bool_(False))
