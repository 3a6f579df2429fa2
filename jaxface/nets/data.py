"""Training data for the encoder: crops, and the three sources of survey §5.1.

* **Generate & Render** (§5.1.2): :func:`synthetic_batch` draws random faces with
  :func:`jaxface.eval.synthetic.generate` and renders them in JAX, on the fly, inside the
  training step's data function (no disk dataset). Every parameter is known.
* **Fit & Render** (§5.1.1): :func:`load_fit_dataset` reads the outputs of ``jaxface fit``
  (``<dir>/<stem>/result.json`` + the photo named by its ``input``); the fitted parameters are
  the targets.
* **Self-supervision** (§5.1.3): :func:`load_landmark_dataset` pairs photos with 2D landmarks
  (iBUG ``.pts`` files or a detector's); no parameters are known, the loss goes through the
  renderer.

Every image is cropped the same way, at training and at prediction time: a square box centred
on the 68 landmarks' bounding box with side ``CROP_MARGIN`` times its longer side
(:func:`landmark_box`), resampled to S x S with antialiasing (:func:`crop_to_box`). The crop's
camera follows from the photo's (:func:`crop_camera_of`), so poses stay metric.

All batches are :class:`Batch` pytrees with a leading batch axis, and each is a deterministic
function of a PRNG key: a run resumed from a checkpoint sees exactly the data it would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass
from jaxface.camera import PerspectiveCamera
from jaxface.cli._common import read_image
from jaxface.nets.decoder import FaceDecoder, Prediction

Array = jax.Array

__all__ = ["BLOCKS", "CROP_MARGIN", "Batch", "ImageSet", "crop_camera_of", "crop_landmarks",
           "crop_to_box", "dataset_batch", "landmark_box", "load_fit_dataset",
           "load_landmark_dataset", "synthetic_batch", "uncrop_camera"]

CROP_MARGIN = 2.25
"""Crop side / longer side of the landmarks' bounding box (measured on Generate & Render
faces: 2.25 +- 0.16 at the generator's default framing)."""

BLOCKS = ("identity", "expression", "rotation", "position", "light", "albedo")
"""Order of the columns of :attr:`Batch.target_mask`."""


@pytree_dataclass
class Batch:
    """A batch of crops (leading axis B; S = the encoder's input size).

    Attributes:
      image: (B, S, S, 3) float32 crops in [0, 1].
      camera: PerspectiveCamera with (B,) fields, the crops' cameras.
      landmarks2d: (B, 68, 2) iBUG landmarks in crop pixels (NaN where unknown).
      target: Prediction with a leading B axis (zeros where unsupervised).
      target_mask: (B, 6) 1 where the block (:data:`BLOCKS`) of ``target`` is known.
    """

    image: Any
    camera: Any
    landmarks2d: Any
    target: Any
    target_mask: Any


# ----------------------------------------------------------------------------- crops


def landmark_box(landmarks: Any, margin: float = CROP_MARGIN) -> Array:
    """(L, 2) landmarks (NaN rows ignored) -> (3,) crop box ``(centre x, centre y, side)``."""
    lm = jnp.asarray(landmarks, jnp.float32)
    ok = jnp.all(jnp.isfinite(lm), -1)[:, None]
    lo = jnp.min(jnp.where(ok, lm, jnp.inf), 0)
    hi = jnp.max(jnp.where(ok, lm, -jnp.inf), 0)
    c = (lo + hi) / 2
    return jnp.stack([c[0], c[1], margin * jnp.max(hi - lo)])


def crop_to_box(image: Any, box: Any, size: int) -> Array:
    """Resample the square ``box`` (centre x, centre y, side; pixels) of an (H, W, 3) image to
    (size, size, 3), antialiased when shrinking; outside the image is black."""
    img = jnp.asarray(image, jnp.float32)
    box = jnp.asarray(box, jnp.float32)
    scale = size / box[2]
    x0 = box[0] - box[2] / 2
    y0 = box[1] - box[2] / 2
    return jax.image.scale_and_translate(
        img, (size, size, img.shape[-1]), (0, 1), jnp.stack([scale, scale]),
        jnp.stack([-y0 * scale, -x0 * scale]), method="linear", antialias=True)


def crop_camera_of(camera: PerspectiveCamera, box: Any, size: int) -> PerspectiveCamera:
    """The camera of the crop ``box`` of an image taken with ``camera``, resized to ``size``."""
    box = jnp.asarray(box, jnp.float32)
    k = size / box[2]
    return PerspectiveCamera(fx=camera.fx * k, fy=camera.fy * k,
                             cx=(camera.cx - (box[0] - box[2] / 2)) * k,
                             cy=(camera.cy - (box[1] - box[2] / 2)) * k)


def uncrop_camera(camera: PerspectiveCamera, box: Any, size: int) -> PerspectiveCamera:
    """Inverse of :func:`crop_camera_of`: the full image's camera from a crop's."""
    box = jnp.asarray(box, jnp.float32)
    k = size / box[2]
    return PerspectiveCamera(fx=camera.fx / k, fy=camera.fy / k,
                             cx=camera.cx / k + (box[0] - box[2] / 2),
                             cy=camera.cy / k + (box[1] - box[2] / 2))


def crop_landmarks(landmarks: Any, box: Any, size: int) -> Array:
    """(L, 2) image pixels -> crop pixels of ``box`` resized to ``size``."""
    box = jnp.asarray(box, jnp.float32)
    k = size / box[2]
    corner = jnp.stack([box[0] - box[2] / 2, box[1] - box[2] / 2])
    return (jnp.asarray(landmarks, jnp.float32) - corner) * k


# ----------------------------------------------------------------------------- generate & render


def synthetic_batch(dec: FaceDecoder, key: Array, batch_size: int, *,
                    box_jitter: tuple[float, float] = (0.08, 0.05), render_size: int | None = None,
                    **generate_kwargs: Any) -> Batch:
    """Generate & Render a batch (survey §5.1.2), cropped like real photos.

    Each face is drawn and rendered by :func:`jaxface.eval.synthetic.generate` at
    ``render_size`` (default S), then cropped by :func:`landmark_box` of its own projected
    landmarks, with the box's side scaled by ``1 +- box_jitter[0]`` and its centre shifted by
    ``+- box_jitter[1]`` of the side (uniform), so the encoder learns to tolerate imperfect
    detections. Deterministic in ``key``; jit it with ``dec`` as an argument.

    Args:
      dec: the decoder (its model, albedo harmonics and S).
      key: PRNG key; batch_size: B (static).
      generate_kwargs: passed to ``generate`` (``mode`` defaults to ``"hard"``).
    """
    from jaxface.eval.synthetic import generate

    s = dec.image_size
    rs = render_size or s
    kw = {"mode": "hard", "n_harmonics": dec.albedo.n_coefficients // 3, **generate_kwargs}

    def one(k: Array) -> tuple:
        kg, kj = jax.random.split(k)
        f = generate(dec.model, kg, (rs, rs), **kw)
        box = landmark_box(f.landmarks2d)
        j = jax.random.uniform(kj, (3,), minval=-1.0, maxval=1.0)
        side = box[2] * (1.0 + box_jitter[0] * j[2])
        box = jnp.stack([box[0] + box_jitter[1] * side * j[0],
                         box[1] + box_jitter[1] * side * j[1], side])
        cam = crop_camera_of(f.camera, box, s)
        target = Prediction(identity=f.identity, expression=f.expression, rotation=f.rotation,
                            translation=f.translation, camera=cam, sh=f.sh,
                            albedo_coefficients=f.albedo_coefficients)
        return (crop_to_box(f.image, box, s), cam, crop_landmarks(f.landmarks2d, box, s),
                target)

    img, cam, lm, target = jax.vmap(one)(jax.random.split(key, batch_size))
    return Batch(image=img, camera=cam, landmarks2d=lm, target=target,
                 target_mask=jnp.ones((batch_size, len(BLOCKS)), jnp.float32))


# ----------------------------------------------------------------------------- real photos


@pytree_dataclass
class ImageSet:
    """N pre-cropped real photos held in memory (a :class:`Batch` with a leading N axis plus
    the crop boxes and sources); sample batches from it with :func:`dataset_batch`.

    Attributes:
      data: Batch of all N crops.
      boxes: (N, 3) crop boxes in the original photos.
    """

    data: Any
    boxes: Any

    @property
    def size(self) -> int:
        return int(np.shape(self.boxes)[0])


def dataset_batch(dataset: ImageSet, key: Array, batch_size: int) -> Batch:
    """B crops drawn uniformly with replacement from ``dataset`` (deterministic in ``key``)."""
    n = dataset.boxes.shape[0]
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), dataset.data)


def _zero_target(dec: FaceDecoder, cam: PerspectiveCamera) -> Prediction:
    return Prediction(identity=np.zeros(dec.model.n_identity, np.float32),
                      expression=np.zeros(dec.n_expression, np.float32),
                      rotation=np.asarray(np.eye(3), np.float32),
                      translation=np.asarray([0.0, 0.0, 1000.0], np.float32), camera=cam,
                      sh=np.asarray(dec.sh_base, np.float32),
                      albedo_coefficients=np.zeros(dec.n_albedo, np.float32))


def _stack(items: list) -> Any:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *items)


def load_landmark_dataset(dec: FaceDecoder, images: list[Any], landmarks: list[Any],
                          focal: list[float] | None = None) -> ImageSet:
    """Self-supervision data (survey §5.1.3): photos with their 68 iBUG landmarks.

    Args:
      dec: the decoder (crop size S).
      images: (H, W, 3) float arrays in [0, 1] or image paths.
      landmarks: (68, 2) pixel arrays (NaN rows allowed) or ``.pts`` paths, one per image.
      focal: focal lengths in pixels (default ``max(H, W)``, as ``fit_landmarks``).
    """
    from jaxface.detect.pts import read_pts

    if len(images) != len(landmarks):
        raise ValueError(f"{len(images)} images but {len(landmarks)} landmark sets")
    if not images:
        raise ValueError("no images")
    s = dec.image_size
    items, boxes = [], []
    for i, (im, lm) in enumerate(zip(images, landmarks, strict=True)):
        img = read_image(Path(im)) if isinstance(im, (str, Path)) else np.asarray(im, np.float32)
        pts = read_pts(lm) if isinstance(lm, (str, Path)) else np.asarray(lm, np.float32)
        if pts.shape != (68, 2):
            raise ValueError(f"image {i}: landmarks must be (68, 2), got {pts.shape}")
        h, w = img.shape[:2]
        f = float(max(h, w)) if focal is None else float(focal[i])
        cam = PerspectiveCamera(fx=np.float32(f), fy=np.float32(f), cx=np.float32(w / 2),
                                cy=np.float32(h / 2))
        box = landmark_box(pts)
        ccam = jax.tree.map(np.asarray, crop_camera_of(cam, box, s))
        items.append((np.asarray(crop_to_box(img, box, s)), ccam,
                      np.asarray(crop_landmarks(pts, box, s)), _zero_target(dec, ccam),
                      np.zeros(len(BLOCKS), np.float32)))
        boxes.append(np.asarray(box))
    img, cam, lm, tgt, mask = _stack(items)
    return ImageSet(data=Batch(image=img, camera=cam, landmarks2d=lm, target=tgt,
                               target_mask=mask), boxes=np.stack(boxes))


def load_fit_dataset(dec: FaceDecoder, folder: str | Path) -> ImageSet:
    """Fit & Render data (survey §5.1.1): the outputs of ``jaxface fit`` in ``folder``.

    Reads every ``<folder>/**/result.json`` and the photo its ``input`` names. Targets are the
    fitted identity, expression and pose (and the SH light when the fit was photometric);
    landmarks are the observed ones when recorded, else the fitted ones.

    Raises:
      FileNotFoundError: no result.json under ``folder`` or a photo is missing.
      ValueError: a result of another model (identity / expression length mismatch).
    """
    folder = Path(folder)
    files = sorted(folder.rglob("result.json"))
    if not files:
        raise FileNotFoundError(f"no result.json under {folder} (run `jaxface fit` first)")
    s = dec.image_size
    items, boxes = [], []
    for f in files:
        r = json.loads(f.read_text())
        src = Path(r.get("input_path") or r.get("input", ""))
        if not src.is_absolute():
            src = (f.parent / src) if (f.parent / src).exists() else src
        if not src.exists():
            raise FileNotFoundError(f"{f}: input photo {str(src)!r} not found")
        img = read_image(src)
        ident = np.asarray(r["identity"], np.float32)
        expr = np.asarray(r["expression"], np.float32)
        if ident.shape != (dec.model.n_identity,) or expr.shape != (dec.n_expression,):
            raise ValueError(f"{f}: fit of another model ({ident.shape[0]} identity, "
                             f"{expr.shape[0]} expression coefficients; the decoder's model "
                             f"has {dec.model.n_identity}, {dec.n_expression})")
        c = r["camera"]
        cam = PerspectiveCamera(fx=np.float32(c["fx"]), fy=np.float32(c["fy"]),
                                cx=np.float32(c["cx"]), cy=np.float32(c["cy"]))
        lm = np.asarray(r.get("observed_landmarks") or r["landmarks2d"], np.float32)
        box = landmark_box(np.asarray(r["landmarks2d"], np.float32))
        ccam = jax.tree.map(np.asarray, crop_camera_of(cam, box, s))
        has_sh = "sh" in r
        tgt = Prediction(identity=ident, expression=expr,
                         rotation=np.asarray(r["rotation"], np.float32),
                         translation=np.asarray(r["translation"], np.float32), camera=ccam,
                         sh=np.asarray(r["sh"], np.float32) if has_sh else np.asarray(
                             dec.sh_base, np.float32),
                         albedo_coefficients=np.zeros(dec.n_albedo, np.float32))
        mask = np.asarray([1, 1, 1, 1, float(has_sh), 0], np.float32)
        items.append((np.asarray(crop_to_box(img, box, s)), ccam,
                      np.asarray(crop_landmarks(lm, box, s)), tgt, mask))
        boxes.append(np.asarray(box))
    img, cam, lm, tgt, mask = _stack(items)
    return ImageSet(data=Batch(image=img, camera=cam, landmarks2d=lm, target=tgt,
                               target_mask=mask), boxes=np.stack(boxes))
