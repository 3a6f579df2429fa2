"""Cameras as pytrees: perspective (pinhole), weak-perspective (scaled orthographic), affine.

Conventions (project-wide)
--------------------------
* Camera frame: right-handed, ``+x`` right, ``+y`` down, ``+z`` forward into the scene (OpenCV).
  Units: millimetres.
* Pixels: ``u`` right, ``v`` down; pixel ``(i, j)`` (row, column) covers ``[j, j+1) x [i, i+1)``,
  so its centre is ``(j + 0.5, i + 0.5)`` and the principal point of a centred ``(H, W)`` camera
  is ``(W/2, H/2)``. ``image_size`` is always ``(H, W)``.
* Extrinsics: a world->camera rigid transform ``p_cam = R @ p_world + t``, carried as a
  :class:`Pose` (or any :class:`jaxface.geometry.Similarity`).

Projection models
-----------------
* :class:`PerspectiveCamera` ``(fx, fy, cx, cy)``: ``u = fx x/z + cx``, ``v = fy y/z + cy``
  (survey eq. 5, ``P(v) = f/v_z (v_x, v_y) + (o_x, o_y)``).
* :class:`WeakPerspectiveCamera` ``(scale, cx, cy)``: ``u = s x + cx``, ``v = s y + cy``
  (survey eq. 8); it approximates a perspective camera with ``s = f / z_mean``.
* :class:`AffineCamera` ``matrix (2, 4)``: ``(u, v) = P @ (X, 1)``. Unlike the other two, its
  input points are in the *model/world* frame (``P`` already contains the extrinsics, as in
  Aldrian & Smith's ``p = C v``), and its depth is the coordinate along the projection direction
  ``d = normalize(P[0, :3] x P[1, :3])``.

Near plane and points behind the camera
---------------------------------------
Perspective division uses ``z_safe = max(z, near)`` (``near`` defaults to :data:`DEFAULT_NEAR`
= 1 mm), so points at or behind the camera project to finite (large) pixel coordinates with a
zero gradient through ``z``; :func:`to_screen` and :func:`in_front` report them as invalid.
Callers (rasteriser, landmark energies) must mask invalid points out.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxface._pytree import pytree_dataclass
from jaxface.geometry import Similarity

Array = jax.Array

__all__ = [
    "DEFAULT_NEAR",
    "AffineCamera",
    "Camera",
    "PerspectiveCamera",
    "Pose",
    "Screen",
    "WeakPerspectiveCamera",
    "default_camera",
    "estimate_affine_camera",
    "in_front",
    "intrinsics_matrix",
    "look_at",
    "project",
    "to_screen",
    "unproject",
]

DEFAULT_NEAR = 1.0
"""Near-plane distance in mm: perspective division clamps ``z`` to at least this value."""


_HI = jax.lax.Precision.HIGHEST


def _mm(a: Any, b: Any) -> Array:
    """``a @ b`` in full float32 precision (no TF32/bf16 passes on GPU/TPU)."""
    return jnp.matmul(a, b, precision=_HI)


def _f(x: Any) -> Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


@pytree_dataclass
class PerspectiveCamera:
    """Pinhole camera (OpenCV model without distortion).

    Attributes:
      fx, fy: () focal lengths in pixels.
      cx, cy: () principal point in pixels (``(W/2, H/2)`` for a centred camera).
    """

    fx: Any
    fy: Any
    cx: Any
    cy: Any

    @classmethod
    def from_matrix(cls, k: Any) -> PerspectiveCamera:
        """From a 3x3 intrinsics matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (skew ignored)."""
        k = _f(k)
        if k.shape != (3, 3):
            raise ValueError(f"intrinsics matrix must be 3x3, got {tuple(k.shape)}")
        return cls(fx=k[0, 0], fy=k[1, 1], cx=k[0, 2], cy=k[1, 2])


@pytree_dataclass
class WeakPerspectiveCamera:
    """Scaled orthographic camera ``(u, v) = scale * (x, y) + (cx, cy)``.

    Attributes:
      scale: () pixels per mm.
      cx, cy: () image position (pixels) of the camera-frame origin.
    """

    scale: Any
    cx: Any
    cy: Any


@pytree_dataclass
class AffineCamera:
    """General affine camera ``(u, v) = matrix @ (X, Y, Z, 1)`` acting on world points.

    Attributes:
      matrix: (2, 4). Use :meth:`from_matrix` to build one from a 3x4 matrix with last row
        ``(0, 0, 0, 1)``.
    """

    matrix: Any

    @classmethod
    def from_matrix(cls, p: Any) -> AffineCamera:
        """From a (2, 4) matrix or a (3, 4) affine one whose last row must be ``(0, 0, 0, 1)``."""
        p = _f(p)
        if p.shape == (3, 4):
            try:
                last = [float(x) for x in p[2]]
            except jax.errors.ConcretizationTypeError:
                last = None
            if last is not None and any(
                abs(a - b) > 1e-6 for a, b in zip(last, (0.0, 0.0, 0.0, 1.0), strict=True)
            ):
                raise ValueError(f"a 3x4 affine camera needs last row (0, 0, 0, 1), got {last}")
            p = p[:2]
        if p.shape != (2, 4):
            raise ValueError(f"affine camera matrix must be (2, 4) or (3, 4), got {p.shape}")
        return cls(matrix=p)


Camera = PerspectiveCamera | WeakPerspectiveCamera | AffineCamera


@pytree_dataclass
class Pose:
    """Rigid world->camera transform ``p_cam = rotation @ p_world + translation`` (mm)."""

    rotation: Any
    translation: Any

    @classmethod
    def identity(cls, dtype: Any = jnp.float32) -> Pose:
        return cls(rotation=jnp.eye(3, dtype=dtype), translation=jnp.zeros((3,), dtype))

    @classmethod
    def look_at(cls, eye: Any, target: Any, up: Any = (0.0, 1.0, 0.0)) -> Pose:
        """See :func:`look_at`."""
        r, t = look_at(eye, target, up)
        return cls(rotation=r, translation=t)

    def apply(self, points: Any) -> Array:
        """World points (..., 3) -> camera-frame points (..., 3)."""
        return _mm(_f(points), jnp.swapaxes(self.rotation, -1, -2)) + self.translation

    def inverse(self) -> Pose:
        """The camera->world transform."""
        rt = jnp.swapaxes(self.rotation, -1, -2)
        return Pose(rotation=rt, translation=-_mm(rt, self.translation))

    def compose(self, other: Pose) -> Pose:
        """``self ∘ other`` (apply ``other`` first)."""
        return Pose(
            rotation=_mm(self.rotation, other.rotation),
            translation=_mm(self.rotation, other.translation) + self.translation,
        )

    def camera_center(self) -> Array:
        """The camera centre in world coordinates, ``-R^T t`` (3,)."""
        return -_mm(jnp.swapaxes(self.rotation, -1, -2), self.translation)

    def to_similarity(self) -> Similarity:
        return Similarity(
            scale=jnp.ones((), jnp.result_type(self.rotation)),
            rotation=self.rotation,
            translation=self.translation,
        )


class Screen(NamedTuple):
    """Output of :func:`to_screen` (a NamedTuple, hence a pytree; unpacks as a tuple).

    Attributes:
      xyz: (..., 3) ``(u, v)`` in pixels and ``z`` = camera-space depth (smaller is nearer);
        the rasteriser's input.
      w: (...,) the homogeneous ``w`` of each vertex: the clamped camera depth for a
        perspective camera and 1 for (weak-perspective / affine) parallel projections. A
        perspective-correct interpolator weights screen-space barycentrics by ``1/w``.
      valid: (...,) bool, False for perspective points with ``z <= near``.
    """

    xyz: Array
    w: Array
    valid: Array


def _check_points(points: Any, name: str = "points") -> Array:
    p = _f(points)
    if p.ndim < 1 or p.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3), got {tuple(p.shape)}")
    return p


def _clamp_depth(z: Array, near: float) -> Array:
    return jnp.where(z > near, z, near)


def _affine_direction(p: Array) -> Array:
    d = jnp.cross(p[0, :3], p[1, :3])
    return d / jnp.sqrt(jnp.maximum(jnp.sum(d * d), 1e-30))


def _unsupported(camera: Any) -> TypeError:
    return TypeError(
        "camera must be a PerspectiveCamera, WeakPerspectiveCamera or AffineCamera, "
        f"got {type(camera).__name__}"
    )


def in_front(points_cam: Any, near: float = DEFAULT_NEAR) -> Array:
    """(..., 3) camera-frame points -> (...,) bool: ``z > near``."""
    return _check_points(points_cam)[..., 2] > near


def project(camera: Camera, points_cam: Any, near: float = DEFAULT_NEAR) -> Array:
    """Project points to pixels.

    Args:
      camera: a camera pytree.
      points_cam: (..., 3) points in the camera frame (world frame for :class:`AffineCamera`).
      near: near plane (mm) for the perspective clamp ``z_safe = max(z, near)``.
    Returns:
      (..., 2) pixel coordinates ``(u, v)``; always finite.
    """
    p = _check_points(points_cam, "points_cam")
    if isinstance(camera, PerspectiveCamera):
        z = _clamp_depth(p[..., 2], near)
        u = camera.fx * p[..., 0] / z + camera.cx
        v = camera.fy * p[..., 1] / z + camera.cy
        return jnp.stack([u, v], axis=-1)
    if isinstance(camera, WeakPerspectiveCamera):
        centre = jnp.stack([jnp.asarray(camera.cx), jnp.asarray(camera.cy)]).astype(p.dtype)
        return camera.scale * p[..., :2] + centre
    if isinstance(camera, AffineCamera):
        m = _f(camera.matrix)
        return _mm(p, m[:, :3].T) + m[:, 3]
    raise _unsupported(camera)


def to_screen(camera: Camera, points_cam: Any, near: float = DEFAULT_NEAR) -> Screen:
    """Screen-space vertices for the rasteriser: ``Screen(xyz (..., 3), w (...,), valid (...,))``.

    ``xyz[..., :2]`` is :func:`project`; ``xyz[..., 2]`` is the camera-space depth ``z``
    (unclamped for parallel projections; clamped to ``near`` for perspective so it stays
    positive and finite), for an affine camera the coordinate along its projection direction.
    """
    p = _check_points(points_cam, "points_cam")
    uv = project(camera, p, near)
    if isinstance(camera, PerspectiveCamera):
        z = _clamp_depth(p[..., 2], near)
        return Screen(jnp.concatenate([uv, z[..., None]], -1), z, p[..., 2] > near)
    if isinstance(camera, WeakPerspectiveCamera):
        z = p[..., 2]
    else:  # AffineCamera (project() has rejected anything else)
        z = _mm(p, _affine_direction(_f(camera.matrix)))
    ones = jnp.ones_like(z)
    return Screen(jnp.concatenate([uv, z[..., None]], -1), ones, jnp.ones(z.shape, bool))


def unproject(camera: Camera, pixels: Any, depth: Any) -> Array:
    """Back-project pixels at the given depth: the inverse of :func:`to_screen`'s ``(u, v, z)``.

    Args:
      pixels: (..., 2) pixel coordinates.
      depth: (...,) camera-space ``z`` (for an affine camera: the coordinate along its
        projection direction), broadcastable against ``pixels[..., 0]``.
    Returns:
      (..., 3) points in the camera frame (world frame for :class:`AffineCamera`).
    """
    px = _f(pixels)
    if px.ndim < 1 or px.shape[-1] != 2:
        raise ValueError(f"pixels must have shape (..., 2), got {tuple(px.shape)}")
    z = jnp.broadcast_to(_f(depth), px.shape[:-1]).astype(px.dtype)
    if isinstance(camera, PerspectiveCamera):
        x = (px[..., 0] - camera.cx) * z / camera.fx
        y = (px[..., 1] - camera.cy) * z / camera.fy
        return jnp.stack([x, y, z], axis=-1)
    if isinstance(camera, WeakPerspectiveCamera):
        x = (px[..., 0] - camera.cx) / camera.scale
        y = (px[..., 1] - camera.cy) / camera.scale
        return jnp.stack([x, y, z], axis=-1)
    if isinstance(camera, AffineCamera):
        m = _f(camera.matrix)
        a = jnp.concatenate([m[:, :3], _affine_direction(m)[None]], axis=0)  # (3, 3)
        rhs = jnp.concatenate([px - m[:, 3], z[..., None]], axis=-1)
        return _mm(rhs, jnp.linalg.inv(a).T)
    raise _unsupported(camera)


def intrinsics_matrix(camera: PerspectiveCamera) -> Array:
    """``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (3, 3) of a :class:`PerspectiveCamera`."""
    if not isinstance(camera, PerspectiveCamera):
        raise TypeError(f"intrinsics_matrix needs a PerspectiveCamera, got {type(camera).__name__}")
    fx, fy, cx, cy = (_f(a) for a in (camera.fx, camera.fy, camera.cx, camera.cy))
    dtype = jnp.result_type(fx, fy, cx, cy)
    o = jnp.zeros((), dtype)
    i = jnp.ones((), dtype)
    return jnp.stack(
        [jnp.stack([fx, o, cx]), jnp.stack([o, fy, cy]), jnp.stack([o, o, i])]
    ).astype(dtype)


def default_camera(image_size: tuple[int, int], fov_degrees: float = 30.0) -> PerspectiveCamera:
    """A centred pinhole camera with square pixels and the given *vertical* field of view.

    ``fy = fx = (H / 2) / tan(fov / 2)``, ``(cx, cy) = (W / 2, H / 2)``.
    """
    if len(image_size) != 2 or min(int(image_size[0]), int(image_size[1])) <= 0:
        raise ValueError(f"image_size must be (H, W) with positive entries, got {image_size}")
    if not 0.0 < float(fov_degrees) < 180.0:
        raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees}")
    h, w = int(image_size[0]), int(image_size[1])
    f = 0.5 * h / math.tan(math.radians(float(fov_degrees)) / 2.0)
    return PerspectiveCamera(
        fx=jnp.float32(f), fy=jnp.float32(f), cx=jnp.float32(w / 2), cy=jnp.float32(h / 2)
    )


def look_at(eye: Any, target: Any, up: Any = (0.0, 1.0, 0.0)) -> tuple[Array, Array]:
    """World->camera ``(R, t)`` for a camera at ``eye`` looking at ``target``.

    In our convention the camera's ``+z`` axis points from ``eye`` to ``target`` and its ``+y``
    axis points *down*, i.e. along the component of ``-up`` orthogonal to the view direction
    (``up`` is the world's up direction, ``+y`` by default). Rows of ``R`` are the camera axes in
    world coordinates: ``x = normalize(f x up)``, ``y = f x x``, ``z = f``; ``t = -R @ eye``.
    ``up`` parallel to the view direction is degenerate (R is then not a rotation).

    Returns:
      R (3, 3), t (3,) with ``p_cam = R @ p_world + t``.
    """
    eye = _check_points(eye, "eye")
    target = _check_points(target, "target")
    up = _check_points(up, "up")
    dtype = jnp.result_type(eye, target, up)

    def unit(v: Array) -> Array:
        return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-30))

    f = unit((target - eye).astype(dtype))
    x = unit(jnp.cross(f, up.astype(dtype)))
    y = jnp.cross(f, x)
    r = jnp.stack([x, y, f], axis=-2)
    t = -jnp.einsum("...ij,...j->...i", r, eye.astype(dtype), precision=_HI)
    return r, t


def estimate_affine_camera(points3d: Any, points2d: Any, weights: Any = None) -> AffineCamera:
    """Linear least-squares affine camera from 3D-2D correspondences (the "Gold Standard"
    algorithm of Hartley & Zisserman 2004, alg. 7.2, with isotropic normalisation).

    Args:
      points3d: (N, 3) world points, N >= 4, not all coplanar.
      points2d: (N, 2) pixels.
      weights: optional (N,) non-negative weights (e.g. a visibility mask).
    Returns:
      :class:`AffineCamera` minimising ``sum_i w_i |P (X_i, 1) - x_i|^2``.
    """
    x3 = _f(points3d)
    x2 = _f(points2d)
    if x3.ndim != 2 or x3.shape[1] != 3 or x2.shape != (x3.shape[0], 2):
        raise ValueError(f"need (N, 3) and (N, 2) points, got {x3.shape} and {x2.shape}")
    if x3.shape[0] < 4:
        raise ValueError(f"an affine camera needs at least 4 correspondences, got {x3.shape[0]}")
    n = x3.shape[0]
    w = jnp.ones((n,), x3.dtype) if weights is None else _f(weights).reshape(n)
    wsum = jnp.maximum(jnp.sum(w), 1e-30)
    # isotropic normalisation (centroid to 0, RMS distance sqrt(3) resp. sqrt(2))
    m3 = jnp.sum(w[:, None] * x3, 0) / wsum
    m2 = jnp.sum(w[:, None] * x2, 0) / wsum

    def rms(x: Array, m: Array) -> Array:
        return jnp.sqrt(jnp.maximum(jnp.sum(w * jnp.sum((x - m) ** 2, 1)) / wsum, 1e-30))

    s3 = jnp.sqrt(3.0) / rms(x3, m3)
    s2 = jnp.sqrt(2.0) / rms(x2, m2)
    a = jnp.concatenate([(x3 - m3) * s3, jnp.ones((n, 1), x3.dtype)], 1)  # (N, 4)
    b = (x2 - m2) * s2  # (N, 2)
    sw = jnp.sqrt(w)[:, None]
    pn = jnp.linalg.lstsq(a * sw, b * sw)[0].T  # (2, 4) in normalised coordinates
    # undo: x = m2 + (1/s2) * Pn @ (s3 (X - m3), 1)
    lin = pn[:, :3] * s3 / s2
    off = m2 + pn[:, 3] / s2 - _mm(lin, m3)
    return AffineCamera(matrix=jnp.concatenate([lin, off[:, None]], axis=1))
