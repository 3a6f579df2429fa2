"""Rotations and similarity transforms, differentiable everywhere (jit, vmap, grad).

Conventions
-----------
* Rotation matrices act on column vectors: ``p' = R @ p``; on row-stacked points ``P' = P @ R.T``.
  Every rotation here is *active* and right-handed (a positive angle about ``+z`` turns ``+x``
  towards ``+y``).
* Axis-angle (rotation vector): ``rotvec = theta * axis`` (radians), shape ``(..., 3)``.
* Quaternions: Hamilton convention, scalar first ``(w, x, y, z)``, shape ``(..., 4)``;
  ``matrix_to_quaternion`` returns the unit quaternion with ``w >= 0``.
* 6D (Zhou et al., CVPR 2019, "On the continuity of rotation representations"): the first two
  *columns* of ``R`` concatenated, ``d6 = (R[:, 0], R[:, 1])``; ``rotation_6d_to_matrix``
  Gram-Schmidt orthonormalises them and completes ``R[:, 2] = R[:, 0] x R[:, 1]``.
* Euler angles: ``angles = (pitch, yaw, roll)`` in radians, rotations about the ``x``, ``y``
  and ``z`` axes respectively, composed as

      R = Rz(roll) @ Ry(yaw) @ Rx(pitch)

  i.e. *extrinsic* x-y-z (first pitch about the fixed x axis, then yaw about the fixed y axis,
  then roll about the fixed z axis), equivalently intrinsic z-y'-x''. ``matrix_to_euler``
  returns ``yaw`` in ``[-pi/2, pi/2]`` and ``pitch, roll`` in ``(-pi, pi]``; at gimbal lock
  (``|yaw| = pi/2``) it sets ``roll = 0``.

Singular points are handled with the "double where" trick (the unsafe branch is evaluated on a
harmless substitute value), so ``grad`` is finite at the identity (``theta = 0``) and near
``theta = pi``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxface._pytree import pytree_dataclass

Array = jax.Array

__all__ = [
    "Similarity",
    "axis_angle_to_matrix",
    "axis_angle_to_quaternion",
    "euler_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_quaternion",
    "matrix_to_rotation_6d",
    "quaternion_conjugate",
    "quaternion_multiply",
    "quaternion_normalize",
    "quaternion_to_axis_angle",
    "quaternion_to_matrix",
    "rotation_6d_to_matrix",
    "rotation_x",
    "rotation_y",
    "rotation_z",
    "skew",
    "umeyama",
]

# Below this squared angle / squared vector norm the Taylor branches are used. Chosen so that the
# closed forms never suffer from cancellation in float32 (relative error ~1e-5 at the switch) and
# the truncated series (up to the 6th order) are exact to float32 precision.
_SMALL_SQ = 1e-2
_TINY = 1e-24


_HI = jax.lax.Precision.HIGHEST


def _mm(a: Any, b: Any) -> Array:
    """``a @ b`` in full float32 precision (no TF32/bf16 passes on GPU/TPU)."""
    return jnp.matmul(a, b, precision=_HI)


def _check_last(x: Any, n: int, name: str) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"{name} must have shape (..., {n}), got {tuple(x.shape)}")
    return x


def _check_matrix(m: Any, name: str = "rotation matrix") -> Array:
    m = jnp.asarray(m)
    if not jnp.issubdtype(m.dtype, jnp.floating):
        m = m.astype(jnp.float32)
    if m.ndim < 2 or m.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape (..., 3, 3), got {tuple(m.shape)}")
    return m


def _normalize(v: Array, axis: int = -1) -> Array:
    """``v / |v|`` with a finite value and gradient at ``v = 0`` (returns ~0 there)."""
    sq = jnp.sum(v * v, axis=axis, keepdims=True)
    return v / jnp.sqrt(jnp.maximum(sq, _TINY))


def _safe_atan2(y: Array, x: Array) -> Array:
    """``atan2`` that returns 0 with a zero (not NaN) gradient at ``(0, 0)``."""
    zero = (y == 0) & (x == 0)
    return jnp.where(zero, 0.0, jnp.arctan2(jnp.where(zero, 0.0, y), jnp.where(zero, 1.0, x)))


def skew(v: Any) -> Array:
    """Cross-product matrix: ``skew(v) @ u == cross(v, u)``. ``(..., 3) -> (..., 3, 3)``."""
    v = _check_last(v, 3, "v")
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    o = jnp.zeros_like(x)
    return jnp.stack(
        [jnp.stack([o, -z, y], -1), jnp.stack([z, o, -x], -1), jnp.stack([-y, x, o], -1)], -2
    )


# --------------------------------------------------------------------------------------------
# axis-angle
# --------------------------------------------------------------------------------------------


def _rodrigues_coefficients(th2: Array) -> tuple[Array, Array]:
    """``A = sin(t)/t`` and ``B = (1 - cos t)/t^2`` as functions of ``t^2``, NaN-free at 0."""
    small = th2 < _SMALL_SQ
    safe = jnp.where(small, 1.0, th2)
    th = jnp.sqrt(safe)
    a_big = jnp.sin(th) / th
    half = 0.5 * th
    b_big = 0.5 * jnp.square(jnp.sin(half) / half)  # (1 - cos t)/t^2 without cancellation
    t = th2
    a_small = 1.0 - t / 6.0 + t * t / 120.0 - t * t * t / 5040.0
    b_small = 0.5 - t / 24.0 + t * t / 720.0 - t * t * t / 40320.0
    return jnp.where(small, a_small, a_big), jnp.where(small, b_small, b_big)


def axis_angle_to_matrix(rotvec: Any) -> Array:
    """Rodrigues' formula ``R = I + A K + B K^2`` with ``K = skew(rotvec)``.

    Args:
      rotvec: (..., 3) rotation vectors ``theta * axis`` in radians.
    Returns:
      (..., 3, 3) rotation matrices. Smooth (and with finite gradients) at ``rotvec = 0``.
    """
    v = _check_last(rotvec, 3, "rotvec")
    th2 = jnp.sum(v * v, axis=-1)
    a, b = _rodrigues_coefficients(th2)
    k = skew(v)
    k2 = v[..., :, None] * v[..., None, :] - th2[..., None, None] * jnp.eye(3, dtype=v.dtype)
    return jnp.eye(3, dtype=v.dtype) + a[..., None, None] * k + b[..., None, None] * k2


def axis_angle_to_quaternion(rotvec: Any) -> Array:
    """(..., 3) rotation vectors -> (..., 4) unit quaternions ``(w, x, y, z)``."""
    v = _check_last(rotvec, 3, "rotvec")
    t = jnp.sum(v * v, axis=-1)
    small = t < _SMALL_SQ
    safe = jnp.where(small, 1.0, t)
    th = jnp.sqrt(safe)
    w_big = jnp.cos(0.5 * th)
    s_big = jnp.sin(0.5 * th) / th
    w_small = 1.0 - t / 8.0 + t * t / 384.0 - t * t * t / 46080.0
    s_small = 0.5 * (1.0 - t / 24.0 + t * t / 1920.0 - t * t * t / 322560.0)
    w = jnp.where(small, w_small, w_big)
    s = jnp.where(small, s_small, s_big)
    return jnp.concatenate([w[..., None], s[..., None] * v], axis=-1)


def quaternion_to_axis_angle(q: Any) -> Array:
    """(..., 4) quaternions ``(w, x, y, z)`` (normalised here) -> (..., 3) rotation vectors.

    The returned angle is in ``[0, pi]`` (``q`` and ``-q`` give the same result).
    """
    q = quaternion_normalize(_check_last(q, 4, "quaternion"))
    q = jnp.where(q[..., :1] < 0, -q, q)
    w, xyz = q[..., 0], q[..., 1:]
    n2 = jnp.sum(xyz * xyz, axis=-1)
    small = n2 < _SMALL_SQ
    n = jnp.sqrt(jnp.where(small, 1.0, n2))
    f_big = 2.0 * jnp.arctan2(n, w) / n
    w_safe = jnp.where(small, w, 1.0)  # w >= ~0.995 in the small branch
    t2 = n2 / (w_safe * w_safe)
    f_small = (2.0 / w_safe) * (1.0 - t2 / 3.0 + t2 * t2 / 5.0 - t2 * t2 * t2 / 7.0)
    f = jnp.where(small, f_small, f_big)
    return f[..., None] * xyz


def matrix_to_axis_angle(matrix: Any) -> Array:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors with angle in ``[0, pi]``."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


# --------------------------------------------------------------------------------------------
# quaternions
# --------------------------------------------------------------------------------------------


def quaternion_normalize(q: Any) -> Array:
    """Unit quaternion ``q / |q|`` (finite gradient at ``q = 0``)."""
    return _normalize(_check_last(q, 4, "quaternion"))


def quaternion_conjugate(q: Any) -> Array:
    """``(w, -x, -y, -z)``; the inverse rotation of a unit quaternion."""
    q = _check_last(q, 4, "quaternion")
    return q * jnp.asarray([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)


def quaternion_multiply(a: Any, b: Any) -> Array:
    """Hamilton product ``a * b`` (the rotation ``b`` followed by ``a``). (..., 4)."""
    a = _check_last(a, 4, "quaternion a")
    b = _check_last(b, 4, "quaternion b")
    aw, ax, ay, az = (a[..., i] for i in range(4))
    bw, bx, by, bz = (b[..., i] for i in range(4))
    return jnp.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quaternion_to_matrix(q: Any) -> Array:
    """(..., 4) quaternions ``(w, x, y, z)`` (normalised here) -> (..., 3, 3) rotations."""
    q = quaternion_normalize(q)
    w, x, y, z = (q[..., i] for i in range(4))
    r = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return jnp.stack([jnp.stack(row, axis=-1) for row in r], axis=-2)


def _shepperd_tables() -> tuple[list[list[list[float]]], list[list[float]]]:
    """Linear maps from ``R.ravel()`` to ``4 q_c q`` for each pivot ``c`` of Shepperd's method
    (a quaternion's outer product ``q q^T`` is affine in ``R``)."""
    # entries of 4 q q^T as (coefficients over R.ravel() index, constant)
    def e(*terms: tuple[int, float], const: float = 0.0) -> tuple[list[float], float]:
        row = [0.0] * 9
        for k, c in terms:
            row[k] = c
        return row, const

    # R.ravel() indices: 00->0 01->1 02->2 10->3 11->4 12->5 20->6 21->7 22->8
    ww = e((0, 1.0), (4, 1.0), (8, 1.0), const=1.0)
    xx = e((0, 1.0), (4, -1.0), (8, -1.0), const=1.0)
    yy = e((0, -1.0), (4, 1.0), (8, -1.0), const=1.0)
    zz = e((0, -1.0), (4, -1.0), (8, 1.0), const=1.0)
    wx, wy, wz = e((7, 1.0), (5, -1.0)), e((2, 1.0), (6, -1.0)), e((3, 1.0), (1, -1.0))
    xy, xz, yz = e((3, 1.0), (1, 1.0)), e((2, 1.0), (6, 1.0)), e((5, 1.0), (7, 1.0))
    rows = [[ww, wx, wy, wz], [wx, xx, xy, xz], [wy, xy, yy, yz], [wz, xz, yz, zz]]
    return ([[r[0] for r in c] for c in rows], [[r[1] for r in c] for c in rows])


_SHEPPERD, _SHEPPERD_OFFSET = _shepperd_tables()


def matrix_to_quaternion(matrix: Any) -> Array:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions ``(w, x, y, z)``, ``w >= 0``.

    Shepperd's method: the four candidate formulas are evaluated and the one with the largest
    (hence well-conditioned, ``>= 1/2``) pivot is selected, so it is accurate and has finite
    gradients for every rotation, including ``theta = pi``.
    """
    m = _check_matrix(matrix)
    flat = m.reshape(m.shape[:-2] + (9,))
    # every candidate numerator is affine in the 9 entries of R: one small matmul
    num = jnp.einsum(
        "cqk,...k->...cq", jnp.asarray(_SHEPPERD, m.dtype), flat, precision=_HI
    ) + jnp.asarray(_SHEPPERD_OFFSET, m.dtype)  # (..., 4 candidates, 4): candidate c is 4 q_c * q
    sq = jnp.diagonal(num, axis1=-2, axis2=-1)  # 4 q_c^2
    piv = jnp.sqrt(jnp.maximum(sq, _TINY))  # 2 |q_c|
    cands = num / (2.0 * jnp.maximum(piv, 0.1))[..., None]
    onehot = jax.nn.one_hot(jnp.argmax(sq, axis=-1), 4, dtype=m.dtype)
    q = jnp.sum(onehot[..., :, None] * cands, axis=-2)
    q = jnp.where(q[..., :1] < 0, -q, q)
    return _normalize(q)


# --------------------------------------------------------------------------------------------
# 6D
# --------------------------------------------------------------------------------------------


def rotation_6d_to_matrix(d6: Any) -> Array:
    """Zhou et al. 6D representation (first two columns) -> (..., 3, 3) rotation, ``det = +1``.

    Args:
      d6: (..., 6) = ``(a1, a2)``; ``R[:, 0] = a1/|a1|``, ``R[:, 1]`` = the normalised component
        of ``a2`` orthogonal to ``R[:, 0]``, ``R[:, 2] = R[:, 0] x R[:, 1]``.
    """
    d6 = _check_last(d6, 6, "d6")
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = _normalize(a1)
    b2 = _normalize(a2 - jnp.sum(b1 * a2, axis=-1, keepdims=True) * b1)
    b3 = jnp.cross(b1, b2)
    return jnp.stack([b1, b2, b3], axis=-1)


def matrix_to_rotation_6d(matrix: Any) -> Array:
    """(..., 3, 3) -> (..., 6): the first two columns, ``(R[:, 0], R[:, 1])``."""
    m = _check_matrix(matrix)
    return jnp.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


# --------------------------------------------------------------------------------------------
# Euler angles
# --------------------------------------------------------------------------------------------


def rotation_x(angle: Any) -> Array:
    """Rotation by ``angle`` (radians) about ``+x``. (...,) -> (..., 3, 3)."""
    a = jnp.asarray(angle, dtype=jnp.result_type(angle, jnp.float32))
    c, s, o, i = jnp.cos(a), jnp.sin(a), jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([i, o, o], -1), jnp.stack([o, c, -s], -1),
                      jnp.stack([o, s, c], -1)], -2)


def rotation_y(angle: Any) -> Array:
    """Rotation by ``angle`` (radians) about ``+y`` (turns ``+z`` towards ``+x``)."""
    a = jnp.asarray(angle, dtype=jnp.result_type(angle, jnp.float32))
    c, s, o, i = jnp.cos(a), jnp.sin(a), jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([c, o, s], -1), jnp.stack([o, i, o], -1),
                      jnp.stack([-s, o, c], -1)], -2)


def rotation_z(angle: Any) -> Array:
    """Rotation by ``angle`` (radians) about ``+z`` (turns ``+x`` towards ``+y``)."""
    a = jnp.asarray(angle, dtype=jnp.result_type(angle, jnp.float32))
    c, s, o, i = jnp.cos(a), jnp.sin(a), jnp.zeros_like(a), jnp.ones_like(a)
    return jnp.stack([jnp.stack([c, -s, o], -1), jnp.stack([s, c, o], -1),
                      jnp.stack([o, o, i], -1)], -2)


def euler_to_matrix(angles: Any) -> Array:
    """``(pitch, yaw, roll)`` radians (..., 3) -> ``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (..., 3, 3)."""
    a = _check_last(angles, 3, "angles")
    return _mm(_mm(rotation_z(a[..., 2]), rotation_y(a[..., 1])), rotation_x(a[..., 0]))


def matrix_to_euler(matrix: Any) -> Array:
    """Inverse of :func:`euler_to_matrix`: (..., 3, 3) -> ``(pitch, yaw, roll)`` (..., 3).

    ``yaw`` is in ``[-pi/2, pi/2]``. At gimbal lock (``cos(yaw) < 1e-6``) ``roll`` is set to 0
    and ``pitch`` absorbs the remaining rotation. Gradients are finite everywhere.
    """
    m = _check_matrix(matrix)
    cy2 = m[..., 0, 0] ** 2 + m[..., 1, 0] ** 2
    cy = jnp.sqrt(jnp.maximum(cy2, _TINY))
    yaw = jnp.arctan2(-m[..., 2, 0], cy)
    lock = cy2 < 1e-12
    pitch_n = _safe_atan2(jnp.where(lock, 0.0, m[..., 2, 1]), jnp.where(lock, 1.0, m[..., 2, 2]))
    roll_n = _safe_atan2(jnp.where(lock, 0.0, m[..., 1, 0]), jnp.where(lock, 1.0, m[..., 0, 0]))
    sy = jnp.where(-m[..., 2, 0] >= 0, 1.0, -1.0)
    pitch_l = _safe_atan2(sy * m[..., 0, 1], m[..., 1, 1])
    pitch = jnp.where(lock, pitch_l, pitch_n)
    roll = jnp.where(lock, 0.0, roll_n)
    return jnp.stack([pitch, yaw, roll], axis=-1)


# --------------------------------------------------------------------------------------------
# Similarity transforms
# --------------------------------------------------------------------------------------------


@pytree_dataclass
class Similarity:
    """``x -> scale * rotation @ x + translation`` (a rigid transform when ``scale == 1``).

    Attributes:
      scale: () positive scalar.
      rotation: (D, D) rotation matrix (D = 3 usually; :func:`umeyama` also returns D = 2).
      translation: (D,) in the destination frame's units (mm).

    One transform per instance; a batch of transforms is a ``Similarity`` whose leaves carry a
    leading batch axis, used under ``jax.vmap``.
    """

    scale: Any
    rotation: Any
    translation: Any

    @classmethod
    def identity(cls, dim: int = 3, dtype: Any = jnp.float32) -> Similarity:
        """The identity transform in ``dim`` dimensions."""
        return cls(
            scale=jnp.ones((), dtype),
            rotation=jnp.eye(dim, dtype=dtype),
            translation=jnp.zeros((dim,), dtype),
        )

    @classmethod
    def from_matrix(cls, matrix: Any) -> Similarity:
        """From a (D+1, D+1) homogeneous matrix ``[[s R, t], [0, 1]]`` (``det(s R) > 0``)."""
        m = jnp.asarray(matrix)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 3:
            raise ValueError(f"homogeneous matrix must be (D+1, D+1), got {tuple(m.shape)}")
        d = m.shape[0] - 1
        a = m[:d, :d]
        s = jnp.abs(jnp.linalg.det(a)) ** (1.0 / d)
        return cls(scale=s, rotation=a / s, translation=m[:d, d])

    def to_matrix(self) -> Array:
        """(D+1, D+1) homogeneous matrix ``[[s R, t], [0, 1]]``."""
        r = jnp.asarray(self.rotation)
        d = r.shape[-1]
        top = jnp.concatenate([self.scale * r, jnp.asarray(self.translation)[:, None]], axis=1)
        bottom = jnp.concatenate([jnp.zeros((1, d), top.dtype), jnp.ones((1, 1), top.dtype)], 1)
        return jnp.concatenate([top, bottom], axis=0)

    def apply(self, points: Any) -> Array:
        """Transform points (..., D) -> (..., D)."""
        p = jnp.asarray(points)
        r = jnp.asarray(self.rotation)
        if p.ndim < 1 or p.shape[-1] != r.shape[-1]:
            raise ValueError(f"points must have shape (..., {r.shape[-1]}), got {tuple(p.shape)}")
        return self.scale * _mm(p, r.T) + self.translation

    def compose(self, other: Similarity) -> Similarity:
        """``self ∘ other``: apply ``other`` first, then ``self``."""
        return Similarity(
            scale=self.scale * other.scale,
            rotation=_mm(self.rotation, other.rotation),
            translation=self.scale * _mm(self.rotation, other.translation) + self.translation,
        )

    def inverse(self) -> Similarity:
        """The inverse transform: ``x -> (1/s) R^T (x - t)``."""
        rt = jnp.swapaxes(jnp.asarray(self.rotation), -1, -2)
        inv_s = 1.0 / self.scale
        return Similarity(scale=inv_s, rotation=rt, translation=-inv_s * _mm(rt, self.translation))


def umeyama(src: Any, dst: Any, with_scale: bool = True, weights: Any = None) -> Similarity:
    """Closed-form least-squares similarity (Umeyama 1991) mapping ``src`` onto ``dst``.

    Minimises ``sum_i w_i |dst_i - (s R src_i + t)|^2`` over rotations ``R`` (``det R = +1``:
    reflections are excluded by the sign correction of the smallest singular direction),
    ``s > 0`` (fixed to 1 when ``with_scale`` is False: orthogonal Procrustes) and ``t``.

    Args:
      src, dst: (N, D) corresponding points, D = 2 or 3, N >= D.
      with_scale: estimate the scale (static Python bool).
      weights: optional (N,) non-negative weights (e.g. a 0/1 mask).
    Returns:
      ``Similarity`` with ``dst ≈ result.apply(src)``. Jit-able; differentiable wherever the
      cross-covariance has distinct singular values (the generic case).
    """
    src = jnp.asarray(src)
    dst = jnp.asarray(dst)
    if src.ndim != 2 or src.shape != dst.shape:
        raise ValueError(
            f"src and dst must both be (N, D) with equal shapes, got {src.shape} and {dst.shape}"
        )
    n, d = src.shape
    if d not in (2, 3) or n < d:
        raise ValueError(f"umeyama needs D in (2, 3) and N >= D points, got N={n}, D={d}")
    dtype = jnp.result_type(src.dtype, dst.dtype, jnp.float32)
    src = src.astype(dtype)
    dst = dst.astype(dtype)
    if weights is None:
        w = jnp.ones((n,), dtype)
    else:
        w = jnp.asarray(weights, dtype)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {tuple(w.shape)}")
    wsum = jnp.maximum(jnp.sum(w), jnp.finfo(dtype).tiny)
    mu_s = jnp.sum(w[:, None] * src, axis=0) / wsum
    mu_d = jnp.sum(w[:, None] * dst, axis=0) / wsum
    sc = src - mu_s
    dc = dst - mu_d
    cov = _mm((dc * w[:, None]).T, sc) / wsum  # (D, D)
    u, sv, vt = jnp.linalg.svd(cov)
    sign = jnp.where(jnp.linalg.det(u) * jnp.linalg.det(vt) < 0, -1.0, 1.0).astype(dtype)
    fix = jnp.ones((d,), dtype).at[-1].set(sign)
    rot = _mm(u * fix, vt)
    if with_scale:
        var_s = jnp.sum(w * jnp.sum(sc * sc, axis=1)) / wsum
        degenerate = var_s <= jnp.finfo(dtype).tiny
        scale = jnp.where(
            degenerate, 1.0, jnp.sum(sv * fix) / jnp.where(degenerate, 1.0, var_s)
        ).astype(dtype)
    else:
        scale = jnp.ones((), dtype)
    trans = mu_d - scale * _mm(rot, mu_s)
    return Similarity(scale=scale, rotation=rot, translation=trans)
