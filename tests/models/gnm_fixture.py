"""A small GNM model file in the exact upstream layout (google/GNM ``gnm_head.npz``), for tests.

The writer mirrors the 23-array schema of ``gnm/shape`` (see ``gnm_data_loader_test.py``'s dummy
dict and ``gnm_xnp.GNM``'s attribute docs): metres, float32 arrays, int32 indices, unicode string
arrays for names and 0-d strings for ``version``/``variant``, ``skinning_weights`` and
``joint_regressor`` as (J, V), ``pose_correctives_regressor`` as (9 J, 3 V), written with
``np.savez_compressed`` and no pickled objects. It also holds :func:`gnm_reference`, a NumPy
re-implementation of upstream's mesh function (``gnm_common``), for the loader tests.
Nothing here imports the loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.models.fixtures import cap_mesh

JOINT_NAMES = ("neck", "head", "left_eye", "right_eye")
PARENTS = (0, 0, 1, 1)  # upstream: the root's entry is itself (0)


def _quads(nu: int, nv: int) -> np.ndarray:
    q = []
    for j in range(nv - 1):
        for i in range(nu - 1):
            a, b, c, d = j * nu + i, j * nu + i + 1, (j + 1) * nu + i, (j + 1) * nu + i + 1
            q.append((a, c, d, b))
    return np.asarray(q, np.int32)


def gnm_arrays(*, k_id: int = 6, k_exp: int = 5, correctives: str = "zero",
               regressor: str = "consistent", seed: int = 0) -> dict[str, Any]:
    """The upstream arrays of a tiny 4-joint GNM (72 vertices), in metres.

    Args:
      correctives: ``"zero"`` (like the released v3.0 file), ``"nonroot"`` (random offsets for
        joints 1..3, root rows zero) or ``"root"`` (the root's rows non-zero too).
      regressor: ``"consistent"``: ``joint_regressor`` reproduces the joints (template and
        identity joint basis are its image; the expression basis is zero where it reads) or
        ``"independent"``: a joint identity basis unrelated to the regressor.
    """
    nu, nv = 8, 9
    verts_mm, tri = cap_mesh(nu, nv, seed=seed)
    rng = np.random.default_rng(seed)
    v = verts_mm.shape[0]
    nj = len(JOINT_NAMES)
    template = verts_mm / 1000.0
    id_basis = rng.normal(0, 2e-3, (k_id, v, 3))
    ex_basis = rng.normal(0, 1e-3, (k_exp, v, 3))
    jr = np.zeros((nj, v))
    support = rng.choice(v, (nj, 4), replace=False)
    for j in range(nj):
        jr[j, support[j]] = 0.25
    if regressor == "consistent":
        ex_basis[:, support.reshape(-1)] = 0.0
        joints = jr @ template
        joint_id_basis = np.einsum("jv,kvc->kjc", jr, id_basis)
    elif regressor == "independent":
        joints = jr @ template + rng.normal(0, 5e-3, (nj, 3))
        joint_id_basis = rng.normal(0, 1e-3, (k_id, nj, 3))
    else:
        raise ValueError(regressor)
    w = rng.uniform(0.05, 1.0, (nj, v)) ** 3
    w /= w.sum(0, keepdims=True)
    pc = np.zeros((9 * nj, 3 * v))
    if correctives in ("nonroot", "root"):
        pc[9:] = rng.normal(0, 2e-3, (9 * (nj - 1), 3 * v))
    if correctives == "root":
        pc[:9] = rng.normal(0, 2e-3, (9, 3 * v))
    quads = _quads(nu, nv)
    uv = rng.uniform(0, 2, (v, 2))  # UDIM: tiles 1001 and 1002
    group_names = np.array(["skin", "left_eye", "right_eye"])
    groups = np.zeros((3, v))
    groups[0] = 1.0
    groups[1, : v // 4] = 0.5
    groups[2, v // 4: v // 2] = 1.0
    f32, i32 = np.float32, np.int32
    return {
        "version": np.array("3.0"),
        "variant": np.array("head"),
        "template_vertex_positions": template.astype(f32),
        "template_joint_positions": joints.astype(f32),
        "vertex_identity_basis": id_basis.astype(f32),
        "joint_identity_basis": joint_id_basis.astype(f32),
        "expression_basis": ex_basis.astype(f32),
        "identity_names": np.array([f"head_{i:03d}" for i in range(k_id)]),
        "joint_names": np.array(JOINT_NAMES),
        "expression_names": np.array([f"lower_face_region_{i:03d}" for i in range(k_exp)]),
        "joint_parent_indices": np.array(PARENTS, i32),
        "skinning_weights": w.astype(f32),
        "quads": quads,
        "triangles": tri.astype(i32),
        "quad_uvs": uv[quads].astype(f32),
        "triangle_uvs": uv[tri].astype(f32),
        "mesh_component_names": np.array(["skin"]),
        "mirror_indices": np.arange(v, dtype=i32)[::-1].copy(),
        "joint_regressor": jr.astype(f32),
        "pose_correctives_regressor": pc.astype(f32),
        "bone_aligned_template_joint_orientations": np.tile(np.eye(3, dtype=f32), (nj, 1, 1)),
        "vertex_groups": groups.astype(f32),
        "vertex_group_names": group_names,
    }


def write_gnm_npz(path: Path, **kwargs: Any) -> dict[str, Any]:
    """Write :func:`gnm_arrays` to ``path`` (``np.savez_compressed``); return the arrays."""
    d = gnm_arrays(**kwargs)
    np.savez_compressed(path, **d)
    return d


# ------------------------------------------------------------------------------------------------
# NumPy re-implementation of upstream's mesh function (gnm_common), float64, metres
# ------------------------------------------------------------------------------------------------

def _rodrigues(r: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    angle = np.sqrt(np.maximum(np.sum(r * r, -1, keepdims=True), eps))
    axis = r / angle
    k = np.zeros(r.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2] = -axis[..., 2], axis[..., 1]
    k[..., 1, 0], k[..., 1, 2] = axis[..., 2], -axis[..., 0]
    k[..., 2, 0], k[..., 2, 1] = -axis[..., 1], axis[..., 0]
    s, c = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def gnm_reference(d: dict[str, Any], identity: np.ndarray, expression: np.ndarray,
                  rotations: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Upstream ``GNM(identity, expression, rotations, translation)``: (V, 3) in metres."""
    g = {k: np.asarray(a, np.float64) if np.asarray(a).dtype.kind == "f" else np.asarray(a)
         for k, a in d.items()}
    parents = [int(p) for p in g["joint_parent_indices"]]
    nj = len(parents)
    v = g["template_vertex_positions"].shape[0]
    verts = (g["template_vertex_positions"]
             + np.einsum("i,ijk->jk", identity, g["vertex_identity_basis"])
             + np.einsum("i,ijk->jk", expression, g["expression_basis"]))
    joints = g["template_joint_positions"] + np.einsum("i,ijk->jk", identity,
                                                       g["joint_identity_basis"])
    rot = _rodrigues(np.asarray(rotations, np.float64))
    feat = (rot - np.eye(3)).reshape(nj * 9)
    verts = verts + (feat @ g["pose_correctives_regressor"]).reshape(v, 3)
    local = np.zeros((nj, 4, 4))
    local[:, :3, :3] = rot
    local[:, 3, 3] = 1.0
    local[0, :3, 3] = joints[0] + translation
    for j in range(1, nj):
        local[j, :3, 3] = joints[j] - joints[parents[j]]
    world = [local[0]]
    for j in range(1, nj):
        world.append(world[parents[j]] @ local[j])
    world = np.stack(world)
    r_w, t_w = world[:, :3, :3], world[:, :3, 3]
    t_bind = t_w - np.einsum("jab,jb->ja", r_w, joints)
    w = g["skinning_weights"]
    per_r = np.einsum("jv,jab->vab", w, r_w)
    per_t = np.einsum("jv,ja->va", w, t_bind)
    return np.einsum("vab,vb->va", per_r, verts) + per_t
