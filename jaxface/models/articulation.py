"""Articulated (skinned) morphable models: FLAME/SMPL-style linear blend skinning.

An articulated model poses its linear (identity + expression) shape ``v_shaped`` (V, 3) with
per-joint axis-angle rotations ``pose`` (J, 3) (FLAME: global, neck, jaw, left eye, right eye):

1. joints        ``J = joint_regressor @ v_shaped``                                  (J, 3)
2. rotations     ``R_j = Rodrigues(pose_j)``                                      (J, 3, 3)
3. correctives   ``v_posed = v_shaped + sum_p f_p pose_basis[p]``, with the pose feature
                 ``f = concat_j>=1 vec(R_j - I)`` (row-major 3x3 entries, joints 1..J-1;
                 FLAME's ``posedirs``), so the rest pose adds nothing;
4. kinematics    ``G_j = G_parent(j) [R_j | J_j - J_parent(j)]`` (root: ``[R_0 | J_0]``),
                 skinning transforms ``A_j = G_j [I | -J_j]`` (4 x 4);
5. skinning      ``v_i = (sum_j w_ij A_j) [v_posed_i; 1]``.

Everything here is pure JAX (jit, vmap, grad); the joint tree (``parents``) is static.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxface._pytree import pytree_dataclass, static_field
from jaxface.geometry import axis_angle_to_matrix

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


@pytree_dataclass
class Articulation:
    """The skinning part of an articulated morphable model, in the model's units.

    Shapes: V vertices, J joints, P pose-corrective directions (``9 (J - 1)`` for FLAME's
    ``(R - I)`` feature, or 0).

    Attributes:
      joint_regressor: (J, V) float32; rest joints = joint_regressor @ v_shaped.
      skinning_weights: (V, J) float32, rows sum to 1.
      pose_basis: (P, V, 3) float32 pose-corrective offsets per unit of pose feature, or None.
      joints_template: (J, 3) float32 joints of the template (informative; the joints are always
        regressed from the shaped vertices), or None.
      parents: parent joint of each joint, -1 for the root (joint 0); parents precede their
        children (static).
    """

    joint_regressor: Any
    skinning_weights: Any
    pose_basis: Any = None
    joints_template: Any = None
    parents: tuple[int, ...] = static_field(default=())

    @property
    def n_joints(self) -> int:
        return len(self.parents)

    @property
    def n_pose_basis(self) -> int:
        return 0 if self.pose_basis is None else int(np.shape(self.pose_basis)[0])


def check_parents(parents: Any, n_joints: int | None = None) -> tuple[int, ...]:
    """Validate a joint tree: ``parents[0] == -1`` and ``0 <= parents[j] < j`` for j >= 1.

    Returns the tree as a tuple of ints; raises ValueError otherwise.
    """
    p = tuple(int(x) for x in np.asarray(parents).reshape(-1))
    if n_joints is not None and len(p) != n_joints:
        raise ValueError(f"{len(p)} parents for {n_joints} joints")
    if not p or p[0] != -1:
        raise ValueError("joint 0 must be the root (parent -1)")
    for j, q in enumerate(p[1:], start=1):
        if not 0 <= q < j:
            raise ValueError(f"joint {j} has parent {q}: parents must precede their children")
    return p


def pose_feature(rotations: Array) -> Array:
    """FLAME's pose-corrective feature ``concat_{j>=1} vec(R_j - I)`` (row-major).

    Args:
      rotations: (J, 3, 3) joint rotation matrices.
    Returns:
      (9 (J - 1),) feature, zero in the rest pose.
    """
    r = jnp.asarray(rotations)
    return (r[1:] - jnp.eye(3, dtype=r.dtype)).reshape(-1)


def forward_kinematics(rotations: Array, joints: Array, parents: tuple[int, ...]
                       ) -> tuple[Array, Array]:
    """Compose local joint rotations down the kinematic tree.

    Args:
      rotations: (J, 3, 3) local rotations (about each joint's rest position).
      joints: (J, 3) rest joint positions.
      parents: static tuple, ``parents[0] == -1``, parents precede children.

    Returns:
      (skinning transforms (J, 4, 4) ``A_j = G_j [I | -J_j]`` mapping rest-pose points to posed
      points for joint j, posed joint positions (J, 3)).
    """
    rot = jnp.asarray(rotations)
    jts = jnp.asarray(joints, rot.dtype)
    n = len(parents)
    if rot.shape != (n, 3, 3) or jts.shape != (n, 3):
        raise ValueError(f"expected rotations ({n}, 3, 3) and joints ({n}, 3), found "
                         f"{rot.shape} and {jts.shape}")
    g_rot: list[Array] = []
    g_t: list[Array] = []
    for j, p in enumerate(parents):  # static, tiny tree: unrolled at trace time
        if p < 0:
            g_rot.append(rot[j])
            g_t.append(jts[j])
        else:
            g_rot.append(jnp.dot(g_rot[p], rot[j], precision=_HIGHEST))
            g_t.append(jnp.dot(g_rot[p], jts[j] - jts[p], precision=_HIGHEST) + g_t[p])
    gr = jnp.stack(g_rot)
    gt = jnp.stack(g_t)
    trans = gt - jnp.einsum("jab,jb->ja", gr, jts, precision=_HIGHEST)
    top = jnp.concatenate([gr, trans[:, :, None]], axis=2)
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], rot.dtype), (n, 1, 4))
    return jnp.concatenate([top, bottom], axis=1), gt


def linear_blend_skinning(points: Array, weights: Array, transforms: Array) -> Array:
    """``v_i = (sum_j w_ij A_j) [p_i; 1]``.

    Args:
      points: (V, 3) rest-pose points; weights: (V, J); transforms: (J, 4, 4).
    Returns:
      (V, 3) skinned points.
    """
    t = jnp.einsum("vj,jab->vab", jnp.asarray(weights, points.dtype), transforms,
                   precision=_HIGHEST)
    return (jnp.einsum("vab,vb->va", t[:, :3, :3], points, precision=_HIGHEST)
            + t[:, :3, 3])


@functools.partial(jax.jit, static_argnames="return_joints")
def articulate(articulation: Articulation, shaped: Array, pose: Array,
               return_joints: bool = False) -> Array | tuple[Array, Array]:
    """Pose shaped vertices with per-joint axis-angle rotations (see the module docstring).

    Args:
      articulation: the skinning model.
      shaped: (V, 3) identity + expression vertices (rest pose).
      pose: (J, 3) axis-angle rotation per joint (radians); zeros = rest pose.
      return_joints: also return the posed joints (static).

    Returns:
      (V, 3) posed vertices (and (J, 3) posed joints).

    Jitted (one compilation per articulation structure and dtype; eager callers would otherwise
    compile every small op of the kinematic chain separately).
    """
    art = articulation
    shaped = jnp.asarray(shaped)
    pose = jnp.asarray(pose, shaped.dtype)
    n = art.n_joints
    if pose.shape != (n, 3):
        raise ValueError(f"pose must be (J, 3) = ({n}, 3) axis-angle vectors (use jax.vmap to "
                         f"batch), got {pose.shape}")
    joints = jnp.dot(jnp.asarray(art.joint_regressor, shaped.dtype), shaped, precision=_HIGHEST)
    rot = axis_angle_to_matrix(pose)
    posed = shaped
    if art.pose_basis is not None and art.n_pose_basis:
        feat = pose_feature(rot)
        pb = jnp.asarray(art.pose_basis, shaped.dtype)
        if feat.shape[0] != pb.shape[0]:
            raise ValueError(f"pose feature has {feat.shape[0]} entries but the pose basis has "
                             f"{pb.shape[0]} directions")
        flat = pb.reshape(pb.shape[0], -1)
        posed = posed + jnp.dot(feat, flat, precision=_HIGHEST).reshape(shaped.shape)
    transforms, posed_joints = forward_kinematics(rot, joints, art.parents)
    out = linear_blend_skinning(posed, art.skinning_weights, transforms)
    return (out, posed_joints) if return_joints else out


def validate_articulation(art: Articulation, n_vertices: int) -> str | None:
    """A message describing the first problem of ``art`` for a V-vertex model, or None."""
    try:
        parents = check_parents(art.parents)
    except ValueError as e:
        return f"parents: {e}"
    nj = len(parents)
    jr = np.asarray(art.joint_regressor)
    if jr.shape != (nj, n_vertices):
        return f"joint_regressor: expected shape ({nj}, {n_vertices}), found {jr.shape}"
    w = np.asarray(art.skinning_weights)
    if w.shape != (n_vertices, nj):
        return f"skinning_weights: expected shape ({n_vertices}, {nj}), found {w.shape}"
    for name, a in (("joint_regressor", jr), ("skinning_weights", w)):
        if not np.all(np.isfinite(a)):
            return f"{name}: non-finite values"
    if not np.allclose(w.sum(axis=1), 1.0, atol=1e-3):
        return "skinning_weights: rows must sum to 1"
    if art.pose_basis is not None:
        pb = np.asarray(art.pose_basis)
        if pb.ndim != 3 or pb.shape[1:] != (n_vertices, 3):
            return f"pose_basis: expected shape (P, {n_vertices}, 3), found {pb.shape}"
        if pb.shape[0] not in (0, 9 * (nj - 1)):
            return (f"pose_basis: {pb.shape[0]} directions, expected 9 (J - 1) = "
                    f"{9 * (nj - 1)} (the (R - I) feature of joints 1..J-1)")
        if not np.all(np.isfinite(pb)):
            return "pose_basis: non-finite values"
    if art.joints_template is not None:
        jt = np.asarray(art.joints_template)
        if jt.shape != (nj, 3) or not np.all(np.isfinite(jt)):
            return f"joints_template: expected finite ({nj}, 3), found {jt.shape}"
    return None


def restrict_articulation(art: Articulation, mask: np.ndarray, span: np.ndarray
                          ) -> tuple[Articulation, float]:
    """The articulation on the vertices ``mask`` (V,) bool.

    Skinning weights and pose correctives are simply restricted. If the joint regressor uses
    only kept vertices it is restricted too; otherwise a new regressor on the kept vertices is
    fitted (minimum-norm least squares) that reproduces the original joints on the model's
    whole shape space ``span`` ((V, 3, M): the mean and every identity/expression direction),
    so the joints stay exact for every coefficient vector.

    Returns:
      (restricted articulation, max relative joint error of the refit on ``span`` (0 if exact)).
    """
    jr = np.asarray(art.joint_regressor, np.float64)
    pb = None if art.pose_basis is None else np.asarray(art.pose_basis)[:, mask]
    err = 0.0
    if not np.any(jr[:, ~mask]):
        new_jr = jr[:, mask]
    else:
        s = np.asarray(span, np.float64)
        rhs = np.einsum("jv,vcm->jcm", jr, s).reshape(jr.shape[0], -1)  # (J, 3M)
        x = s[mask].reshape(int(mask.sum()), -1)  # (V', 3M)
        sol, *_ = np.linalg.lstsq(x.T, rhs.T, rcond=None)  # (V', J)
        new_jr = sol.T
        got = new_jr @ x
        err = float(np.abs(got - rhs).max() / max(np.abs(rhs).max(), 1e-12))
    return Articulation(joint_regressor=new_jr.astype(np.float32),
                        skinning_weights=np.asarray(art.skinning_weights)[mask],
                        pose_basis=pb, joints_template=art.joints_template,
                        parents=art.parents), err
