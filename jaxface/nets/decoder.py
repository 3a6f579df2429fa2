"""The parameter decoder: a network's raw output vector -> model parameters -> the core pipeline.

An encoder regresses one vector per image; :class:`FaceDecoder` says how that vector splits
into the model's parameters and turns it into a :class:`Prediction` (identity, expression, pose,
SH light, albedo), from which the core functions give vertices, landmarks and renders. The
decoder holds no weights; it is a pytree of the model and a few constants, so everything here is
a pure function under ``jit`` / ``vmap`` / ``grad``.

Layout of the raw vector (``P = decoder.size``), in this order:

================  ==========  ============================================================
block             length      meaning
================  ==========  ============================================================
identity          ``n_id``    standardised identity coefficients (``identity / std``)
expression        ``n_ex``    blendshape logits (weight = ``sigmoid(x - 2)``) or
                              standardised PCA coefficients
rotation          6           Zhou et al. 6D rotation on top of ``MODEL_TO_CAMERA``
                              (zeros = frontal)
position          3           ``(u / S - 0.5, v / S - 0.5)`` crop-pixel position of the
                              model's reference point (the face centre), and
                              ``log(fx * depth_ref / (S * z))`` its apparent scale
light             27          ``(sh - sh_base) / 0.3`` (9 x 3 SH, camera frame)
albedo            ``n_alb``   standardised harmonic albedo coefficients
================  ==========  ============================================================

The *pose is relative to the crop camera* (``camera``, a PerspectiveCamera in the crop's
pixels), so the same network output means the same picture whatever the intrinsics: a crop of
a real photo with its own focal length decodes to the pose in that photo's camera.
:func:`to_vector` maps a :class:`Prediction` (a prediction or ground truth) to the normalised
space the parameter losses compare in (the same layout, with the blendshape weights and the
rotation's 6D columns themselves rather than logits).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.camera import PerspectiveCamera, project
from jaxface.fit.albedo import AlbedoModel, albedo_model, albedo_vertices
from jaxface.fit.landmarks import MODEL_TO_CAMERA
from jaxface.geometry import matrix_to_rotation_6d, rotation_6d_to_matrix
from jaxface.models.morphable import MorphableModel, landmarks, vertices
from jaxface.render.shading import sh_ambient

Array = jax.Array

__all__ = ["EXPRESSION_BIAS", "SH_SCALE", "FaceDecoder", "Prediction", "crop_camera", "decode",
           "from_vector", "make_decoder", "prediction_landmarks", "prediction_vertices",
           "raw_to_vector", "render_prediction", "sample_points", "to_vector"]

SH_SCALE = 0.3
"""Scale of the light block: ``sh = sh_base + SH_SCALE * x``."""
EXPRESSION_BIAS = 2.0
"""Blendshape weight = ``sigmoid(x - EXPRESSION_BIAS)``: zero output means a near-neutral face."""


@pytree_dataclass
class Prediction:
    """Model parameters of one face in one (crop) image; batched with a leading axis.

    Attributes:
      identity: (Ks,) raw identity coefficients (all of the model's modes; zero past n_id).
      expression: (Ke,) blendshape weights in [0, 1] or raw PCA coefficients.
      rotation: (3, 3) model -> camera; translation: (3,) mm.
      camera: the PerspectiveCamera the pose refers to.
      sh: (9, 3) SH light in the camera frame.
      albedo_coefficients: (Ka,) coefficients of the decoder's harmonic albedo model.
    """

    identity: Any
    expression: Any
    rotation: Any
    translation: Any
    camera: Any
    sh: Any
    albedo_coefficients: Any


@pytree_dataclass
class FaceDecoder:
    """How a raw vector maps onto a model (see the module docstring for the layout).

    Attributes:
      model: the full morphable model (``vertices`` / landmarks / exports use it).
      face: the sub-model of ``face_region`` (rendered by the photometric loss, carries albedo).
      face_ids: (Vf,) int, ``face``'s vertex ids in ``model``.
      neighbors: (Tf, 3) edge neighbours of ``face``'s triangles (for antialiased renders).
      albedo: the harmonic :class:`AlbedoModel` on ``face``.
      sample_ids: (Vs,) int, model vertex ids on which vertex losses are measured.
      sample_mean, sample_identity, sample_expression: the rows of ``model``'s mean (Vs, 3)
        and bases (n_id, Vs, 3), (Ke, Vs, 3) at ``sample_ids`` (see :func:`sample_points`).
      reference: (3,) model-frame reference point (mean-shape face centre), mm.
      depth_ref: () depth (mm) at which the face fills the crop as in training, for
        ``fx = S``.
      sh_base: (9, 3) the light at zero output.
      n_identity, n_expression, n_albedo: block lengths (static).
      image_size: S, the square crop size the encoder sees (static).
    """

    model: Any
    face: Any
    face_ids: Any
    neighbors: Any
    albedo: Any
    sample_ids: Any
    sample_mean: Any
    sample_identity: Any
    sample_expression: Any
    reference: Any
    depth_ref: Any
    sh_base: Any
    n_identity: int = static_field()
    n_expression: int = static_field()
    n_albedo: int = static_field()
    image_size: int = static_field()
    expression_kind: str = static_field(default="blendshape")

    @property
    def size(self) -> int:
        """P, the length of the raw vector."""
        return self.n_identity + self.n_expression + 6 + 3 + 27 + self.n_albedo

    @property
    def blocks(self) -> dict[str, slice]:
        """Name -> slice of each block of the raw vector."""
        out, i = {}, 0
        for name, n in (("identity", self.n_identity), ("expression", self.n_expression),
                        ("rotation", 6), ("position", 3), ("light", 27),
                        ("albedo", self.n_albedo)):
            out[name] = slice(i, i + n)
            i += n
        return out


def make_decoder(model: MorphableModel, image_size: int = 128, *, n_identity: int | None = None,
                 face_region: str = "face", n_harmonics: int = 16, n_samples: int = 512,
                 face_fraction: float = 0.5) -> FaceDecoder:
    """Build the decoder of ``model`` (host arrays; call once, outside ``jit``).

    Args:
      model: a morphable model with an ``"ibug68"`` landmark set.
      image_size: S, the square input size of the encoder.
      n_identity: identity modes predicted (default all).
      face_region: model region that carries albedo and is rendered by the photometric loss
        (the whole model when the model has no such region).
      n_harmonics: harmonics of the albedo model (3 coefficients each).
      n_samples: vertices of ``face_region`` (evenly strided) on which vertex losses are measured.
      face_fraction: width of the face region / crop width at zero scale output.
    """
    from jaxface.fit.photometric import face_submodel
    from jaxface.render.antialias import edge_neighbors

    if "ibug68" not in model.landmarks:
        raise ValueError(f"model {model.name!r} has no ibug68 landmark set")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    face, face_ids = face_submodel(model, face_region)
    am: AlbedoModel = albedo_model(face, n_harmonics)
    mean = np.asarray(model.mean, np.float32)[face_ids]
    width = float(mean[:, 0].max() - mean[:, 0].min())
    stride = max(1, len(face_ids) // n_samples)
    n_id = model.n_identity if n_identity is None else min(int(n_identity), model.n_identity)
    sh_base = np.asarray(sh_ambient(0.7), np.float32)
    sids = face_ids[::stride][:n_samples]
    return FaceDecoder(
        model=model, face=face, face_ids=jnp.asarray(face_ids, jnp.int32),
        neighbors=jnp.asarray(edge_neighbors(np.asarray(face.triangles)), jnp.int32), albedo=am,
        sample_ids=jnp.asarray(sids, jnp.int32),
        sample_mean=jnp.asarray(np.asarray(model.mean, np.float32)[sids]),
        sample_identity=jnp.asarray(np.asarray(model.identity_basis[:n_id], np.float32)[:, sids]),
        sample_expression=jnp.asarray(
            np.zeros((0, len(sids), 3), np.float32) if model.expression_basis is None
            else np.asarray(model.expression_basis, np.float32)[:, sids]),
        reference=jnp.asarray(mean.mean(0)), depth_ref=jnp.float32(width / face_fraction),
        sh_base=jnp.asarray(sh_base), n_identity=n_id, n_expression=model.n_expression,
        n_albedo=am.n_coefficients, image_size=int(image_size),
        expression_kind=model.expression_kind)


def crop_camera(image_size: int) -> PerspectiveCamera:
    """The camera of a synthetic crop: ``fx = fy = S``, principal point at the centre."""
    s = jnp.float32(image_size)
    return PerspectiveCamera(fx=s, fy=s, cx=s / 2, cy=s / 2)


def raw_to_vector(dec: FaceDecoder, raw: Any) -> Array:
    """(P,) raw network output -> (P,) normalised vector (see :func:`to_vector`)."""
    raw = jnp.asarray(raw, jnp.float32)
    if raw.shape != (dec.size,):
        raise ValueError(f"raw output must have shape ({dec.size},), got {raw.shape}")
    b = dec.blocks
    if dec.n_expression and dec.expression_kind == "blendshape":
        raw = raw.at[b["expression"]].set(jax.nn.sigmoid(raw[b["expression"]] - EXPRESSION_BIAS))
    return raw.at[b["rotation"]].add(jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 0.0], jnp.float32))


def decode(dec: FaceDecoder, raw: Any, camera: PerspectiveCamera) -> Prediction:
    """(P,) raw network output -> Prediction in ``camera`` (vmap for batches)."""
    return from_vector(dec, raw_to_vector(dec, raw), camera)


def from_vector(dec: FaceDecoder, vec: Any, camera: PerspectiveCamera) -> Prediction:
    """(P,) normalised vector (:func:`to_vector`'s space) -> Prediction in ``camera``."""
    vec = jnp.asarray(vec, jnp.float32)
    b = dec.blocks
    model: MorphableModel = dec.model
    std = jnp.asarray(model.identity_std[: dec.n_identity], jnp.float32)
    ident = jnp.zeros((model.n_identity,), jnp.float32).at[: dec.n_identity].set(
        vec[b["identity"]] * std)
    if dec.n_expression == 0:
        expr = jnp.zeros((0,), jnp.float32)
    elif dec.expression_kind == "blendshape":
        expr = vec[b["expression"]]
    else:
        expr = vec[b["expression"]] * jnp.asarray(model.expression_std, jnp.float32)
    rot = rotation_6d_to_matrix(vec[b["rotation"]]) @ jnp.asarray(MODEL_TO_CAMERA)
    pos = vec[b["position"]]
    s = jnp.float32(dec.image_size)
    u = (pos[0] + 0.5) * s
    v = (pos[1] + 0.5) * s
    z = camera.fx * dec.depth_ref / s * jnp.exp(-pos[2])
    p = jnp.stack([(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z])
    trans = p - rot @ dec.reference
    sh = dec.sh_base + SH_SCALE * vec[b["light"]].reshape(9, 3)
    alb = vec[b["albedo"]] * jnp.asarray(dec.albedo.std, jnp.float32)
    return Prediction(identity=ident, expression=expr, rotation=rot, translation=trans,
                      camera=camera, sh=sh, albedo_coefficients=alb)


def sample_points(dec: FaceDecoder, pred: Prediction) -> Array:
    """(Ns, 3) camera-frame positions of the decoder's sample vertices (a cheap partial model
    evaluation: only those vertices' rows of the bases)."""
    pts = dec.sample_mean + jnp.einsum(
        "k,kvc->vc", jnp.asarray(pred.identity, jnp.float32)[: dec.n_identity],
        dec.sample_identity, precision=jax.lax.Precision.HIGHEST)
    if dec.n_expression:
        pts = pts + jnp.einsum("k,kvc->vc", jnp.asarray(pred.expression, jnp.float32),
                               dec.sample_expression, precision=jax.lax.Precision.HIGHEST)
    return pts @ jnp.asarray(pred.rotation).T + jnp.asarray(pred.translation)


def to_vector(dec: FaceDecoder, pred: Prediction) -> Array:
    """Prediction -> (P,) normalised parameter vector (what parameter losses compare).

    Blocks as in the raw layout, except: expression holds the blendshape weights themselves
    and rotation the 6D columns of ``R @ MODEL_TO_CAMERA^T`` (so a frontal face is
    ``(1, 0, 0, 0, 1, 0)``, not zeros).
    """
    model: MorphableModel = dec.model
    std = jnp.asarray(model.identity_std[: dec.n_identity], jnp.float32)
    alpha = jnp.asarray(pred.identity, jnp.float32)[: dec.n_identity] / std
    if dec.n_expression == 0:
        beta = jnp.zeros((0,), jnp.float32)
    elif dec.expression_kind == "blendshape":
        beta = jnp.asarray(pred.expression, jnp.float32)
    else:
        beta = jnp.asarray(pred.expression, jnp.float32) / jnp.asarray(model.expression_std)
    rot = jnp.asarray(pred.rotation, jnp.float32)
    d6 = matrix_to_rotation_6d(rot @ jnp.asarray(MODEL_TO_CAMERA).T)
    cam = pred.camera
    p = rot @ dec.reference + jnp.asarray(pred.translation, jnp.float32)
    s = jnp.float32(dec.image_size)
    uv = project(cam, p[None])[0]
    pos = jnp.stack([uv[0] / s - 0.5, uv[1] / s - 0.5,
                     jnp.log(cam.fx * dec.depth_ref / (s * jnp.maximum(p[2], 1e-3)))])
    light = (jnp.asarray(pred.sh, jnp.float32) - dec.sh_base).reshape(-1) / SH_SCALE
    alb = jnp.asarray(pred.albedo_coefficients, jnp.float32) / jnp.asarray(dec.albedo.std)
    return jnp.concatenate([alpha, beta, d6, pos, light, alb])


def prediction_vertices(dec: FaceDecoder, pred: Prediction, ids: Any = None) -> Array:
    """(N, 3) camera-frame vertices (mm) of ``pred``: all, or the model vertex ids ``ids``."""
    verts = vertices(dec.model, pred.identity, pred.expression)
    if ids is not None:
        verts = verts[jnp.asarray(ids)]
    return verts @ jnp.asarray(pred.rotation).T + jnp.asarray(pred.translation)


def prediction_landmarks(dec: FaceDecoder, pred: Prediction, name: str = "ibug68") -> Array:
    """(L, 2) landmarks of ``pred`` projected into its camera (pixels)."""
    verts = prediction_vertices(dec, pred)
    return project(pred.camera, landmarks(dec.model, verts, name))


def render_prediction(dec: FaceDecoder, pred: Prediction, *, background: Any = 0.0,
                      mode: str = "hard") -> Any:
    """Render the decoder's face region of ``pred`` into an S x S crop (core ``render_mesh``).

    Returns the core :class:`~jaxface.render.RenderOutput` (``rgb``, ``mask``, ...).
    """
    from jaxface.render.pipeline import render_mesh

    verts = prediction_vertices(dec, pred, dec.face_ids)
    alb = jnp.clip(albedo_vertices(dec.albedo, pred.albedo_coefficients), 0.0, 1.0)
    s = dec.image_size
    return render_mesh(verts, dec.face.triangles, pred.camera, (s, s), albedo=alb, sh=pred.sh,
                       background=background, mode=mode, neighbors=dec.neighbors)
