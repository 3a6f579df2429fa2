"""Tests of the ICT-FaceKit loaders (jaxface/models/ict.py) and the embedded default model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxface.errors import ModelFormatError
from jaxface.models import landmarks, load_default, load_ict, vertices
from jaxface.models.ict import (
    ICT_PARTS,
    LEFT_EXTENDED_JAWLINE,
    RIGHT_EXTENDED_JAWLINE,
    default_model_path,
)

REPO = Path(__file__).resolve().parents[2]
# Vertices of the full model kept by scripts/build_default_model.py, in order.
DEFAULT_IDS = np.r_[0:14062, 21451:24591]
# Quantisation bound of the default model (grid 0.002 mm: <= 0.001 mm per basis entry; measured
# 0.034 mm max vertex error with every blendshape on; see jaxface/models/assets/README.md).
BASIS_ATOL = 0.00101


@pytest.fixture(scope="module")
def ict_dir(data_dir) -> Path:
    return data_dir / "ict-facekit"


@pytest.fixture(scope="module")
def full(ict_dir):
    return load_ict(ict_dir / "ict_face_model_light.npz")


@pytest.fixture(scope="module")
def raw(ict_dir):
    with np.load(ict_dir / "ict_face_model_light.npz") as z:
        return {k: z[k] for k in ("neutral", "faces", "face_uv_indices", "uv", "triangles",
                                  "expression_names")}


def np_vertices(m, a, e):
    return (np.asarray(m.mean, np.float64)
            + np.tensordot(np.asarray(a, np.float64), np.asarray(m.identity_basis, np.float64), 1)
            + np.tensordot(np.asarray(e, np.float64), np.asarray(m.expression_basis, np.float64),
                           1))


# ------------------------------------------------------------------------------------------------
# The full model
# ------------------------------------------------------------------------------------------------

def test_full_model_structure_and_units(full, raw, ict_dir):
    assert (full.n_vertices, full.n_triangles) == (26719, 52220)
    assert (full.n_identity, full.n_expression) == (100, 53)
    assert full.expression_kind == "blendshape" and full.units == "mm"
    names = json.loads((ict_dir / "vertex_indices.json").read_text())["expressions"]
    assert list(full.expression_names) == names == [str(n) for n in raw["expression_names"]]
    np.testing.assert_array_equal(full.identity_std, 1.0)
    np.testing.assert_array_equal(full.expression_std, 1.0)
    # cm -> mm
    np.testing.assert_allclose(full.mean, raw["neutral"].astype(np.float64) * 10, rtol=1e-6)
    ext = np.ptp(np.asarray(full.mean), axis=0)
    np.testing.assert_allclose(ext, [248.3, 338.1, 223.2], atol=0.1)
    assert np.asarray(full.mean)[4857, 2] == pytest.approx(130.69, abs=0.05)  # nose tip (lm 30)
    jaw = full.expression_names.index("jawOpen")
    disp = np.linalg.norm(np.asarray(full.expression_basis)[jaw], axis=1).max()
    assert disp == pytest.approx(42.0, abs=0.1)


def test_full_model_topology_and_uv(full, raw):
    np.testing.assert_array_equal(full.triangles, raw["triangles"])
    np.testing.assert_array_equal(full.uv, raw["uv"])  # raw OBJ uv, tiles kept
    assert np.asarray(full.uv)[:, 0].max() > 6.0
    # uv triangles: the same fan (v0, vk, vk+1) of face_uv_indices, polygon by polygon
    faces, fuv = raw["faces"], raw["face_uv_indices"]
    quad = int(np.flatnonzero(faces[:, 3] >= 0)[0])
    tri = int(np.flatnonzero(faces[:, 3] < 0)[0])
    n_before = lambda p: int(np.sum(np.where(faces[:p, 3] >= 0, 2, 1)))  # noqa: E731
    t = n_before(quad)
    np.testing.assert_array_equal(full.uv_triangles[t], fuv[quad, [0, 1, 2]])
    np.testing.assert_array_equal(full.uv_triangles[t + 1], fuv[quad, [0, 2, 3]])
    np.testing.assert_array_equal(full.triangles[t + 1], faces[quad, [0, 2, 3]])
    np.testing.assert_array_equal(full.uv_triangles[n_before(tri)], fuv[tri, :3])


def test_full_model_landmarks_sides_and_contours(full, ict_dir):
    ids = json.loads((ict_dir / "vertex_indices.json").read_text())["idx_to_landmark_verts"]
    lm = full.landmarks["ibug68"]
    np.testing.assert_array_equal(np.asarray(lm.indices)[:, 0], ids)
    p = np.asarray(landmarks(full, vertices(full)))
    assert p.shape == (68, 3)
    # +x is the subject's left: iBUG 0-7 (subject's right jaw, image left in a frontal view),
    # right eye 36-41 and right mouth corner 48 have x < 0; their mirrors have x > 0.
    assert (p[0:8, 0] < -10).all() and (p[9:17, 0] > 10).all() and abs(p[8, 0]) < 1e-3
    assert (p[36:42, 0] < 0).all() and (p[42:48, 0] > 0).all()
    assert p[48, 0] < 0 < p[54, 0]
    np.testing.assert_allclose(p[0:17, 0], -p[16::-1, 0], atol=1e-3)  # symmetric neutral
    assert np.linalg.norm(p[36] - p[45]) == pytest.approx(89.2, abs=0.1)
    assert p[30, 2] == pytest.approx(130.69, abs=0.05)  # landmark 30 = nose tip

    c = full.contours["ibug68"]
    li, cand = np.asarray(c.landmark_index), np.asarray(c.candidates)
    np.testing.assert_array_equal(li, list(range(8)) + list(range(9, 17)))
    mean = np.asarray(full.mean)
    for row, k in zip(cand, li, strict=True):
        row = row[row >= 0]
        assert row[0] == ids[k]  # own vertex first
        side = RIGHT_EXTENDED_JAWLINE if k < 8 else LEFT_EXTENDED_JAWLINE
        assert set(row) == set(side) | {ids[k]}
        assert (np.sign(mean[row, 0]) == (-1 if k < 8 else 1)).all()
    jl = np.asarray(landmarks(full, vertices(full), "ibug68_jawline"))
    np.testing.assert_array_equal(jl[17:], p[17:])
    assert (jl[0:8, 0] < 0).all() and (jl[9:17, 0] > 0).all()


def test_full_model_regions(full):
    r = {k: np.asarray(v) for k, v in full.regions.items()}
    for name, (lo, hi) in ICT_PARTS.items():
        assert r[name].sum() == hi - lo + 1 and r[name][lo] and r[name][hi], name
    assert r["face"].sum() == 9409 and r["narrow_face"].sum() == 6706
    np.testing.assert_array_equal(r["eyes"], r["eyeballs"])
    np.testing.assert_array_equal(r["mouth"], r["mouth_socket"] | r["gums_tongue"] | r["teeth"])
    mean = np.asarray(full.mean)
    assert mean[r["eyeball_left"], 0].min() > 0 > mean[r["eyeball_right"], 0].max()
    assert mean[r["eye_socket_left"], 0].mean() > 0 > mean[r["eye_socket_right"], 0].mean()
    # all landmarks lie in the face area
    assert r["face"][np.asarray(full.landmarks["ibug68"].indices)].all()


def test_full_model_batch_of_64_under_vmap_matches_numpy(full):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((64, full.n_identity)).astype(np.float32)
    E = rng.uniform(0, 1, (64, full.n_expression)).astype(np.float32) * \
        (rng.uniform(size=(64, full.n_expression)) < 0.2)
    out = np.asarray(jax.jit(jax.vmap(vertices, in_axes=(None, 0, 0)))(full, A, E))
    assert out.shape == (64, 26719, 3)
    flat_i = np.asarray(full.identity_basis, np.float64).reshape(100, -1)
    flat_e = np.asarray(full.expression_basis, np.float64).reshape(53, -1)
    ref = (np.asarray(full.mean, np.float64).reshape(1, -1) + A.astype(np.float64) @ flat_i
           + E.astype(np.float64) @ flat_e).reshape(64, -1, 3)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-3)  # float32 of ~100 mm values


def test_folder_of_objs_matches_npz(full, ict_dir, tmp_path):
    folder = tmp_path / "ict"
    folder.mkdir()
    for n in ("generic_neutral_mesh.obj", "identity000.obj", "jawOpen.obj",
              "ICTFaceModelMaterial.mtl"):
        os.symlink(ict_dir / n, folder / n)
    idx = json.loads((ict_dir / "vertex_indices.json").read_text())
    idx["expressions"] = ["jawOpen"]
    (folder / "vertex_indices.json").write_text(json.dumps(idx))
    m = load_ict(folder)
    assert (m.n_identity, m.n_expression, m.expression_names) == (1, 1, ("jawOpen",))
    np.testing.assert_array_equal(m.triangles, full.triangles)
    np.testing.assert_array_equal(m.uv_triangles, full.uv_triangles)
    np.testing.assert_allclose(m.uv, full.uv, atol=1e-6)
    np.testing.assert_allclose(m.mean, full.mean, atol=1e-4)
    np.testing.assert_allclose(m.identity_basis[0], full.identity_basis[0], atol=1e-4)
    j = full.expression_names.index("jawOpen")
    np.testing.assert_allclose(m.expression_basis[0], full.expression_basis[j], atol=1e-4)
    np.testing.assert_array_equal(m.contours["ibug68"].candidates,
                                  full.contours["ibug68"].candidates)
    assert load_ict(folder, n_identity=0).n_identity == 0
    # errors: more identity modes than present, a missing expression OBJ, a foreign mesh
    with pytest.raises(ModelFormatError, match="identity001.obj"):
        load_ict(folder, n_identity=2)
    idx["expressions"] = ["jawOpen", "eyeBlink_L"]
    (folder / "vertex_indices.json").write_text(json.dumps(idx))
    with pytest.raises(ModelFormatError, match="eyeBlink_L.obj"):
        load_ict(folder)
    idx["expressions"] = ["jawOpen"]
    (folder / "vertex_indices.json").write_text(json.dumps(idx))
    (folder / "identity000.obj").unlink()
    (folder / "identity000.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ModelFormatError, match=r"identity000.obj: field 'v'"):
        load_ict(folder)


# ------------------------------------------------------------------------------------------------
# Bad ICT input
# ------------------------------------------------------------------------------------------------

def _fake_ict(folder: Path, v: int = 8, **override):
    """A tiny npz in the staged ICT layout (two quads on v vertices) + vertex_indices.json."""
    rng = np.random.default_rng(0)
    faces = np.array([[0, 1, 2, 3], [4, 5, 6, -1]], np.int32)
    data = dict(neutral=rng.normal(size=(v, 3)).astype(np.float32),
                identity_basis=rng.normal(size=(2, v, 3)).astype(np.float32),
                expression_basis=rng.normal(size=(1, v, 3)).astype(np.float32),
                expression_names=np.array(["jawOpen"]), faces=faces, face_uv_indices=faces,
                uv=rng.uniform(size=(v, 2)).astype(np.float32))
    for k, val in override.items():
        if val is None:
            data.pop(k)
        else:
            data[k] = val
    folder.mkdir(exist_ok=True)
    np.savez(folder / "ict_face_model_light.npz", **data)
    (folder / "vertex_indices.json").write_text(json.dumps(
        {"expressions": ["jawOpen"], "idx_to_landmark_verts": [k % v for k in range(68)]}))
    return folder / "ict_face_model_light.npz"


def test_fake_ict_loads(tmp_path):
    p = _fake_ict(tmp_path / "ok")
    m = load_ict(p)
    np.testing.assert_array_equal(m.triangles, [[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(m.uv_triangles, m.triangles)
    with np.load(p) as z:
        np.testing.assert_allclose(m.mean, z["neutral"] * 10, rtol=1e-6)
    assert load_ict(tmp_path / "ok").n_vertices == 8  # a folder holding the npz
    assert load_ict(p, n_identity=1).n_identity == 1


@pytest.mark.parametrize("override,field", [
    ({"neutral": None}, "neutral"),
    ({"neutral": np.zeros((8, 2), np.float32)}, "neutral"),
    ({"identity_basis": np.zeros((2, 7, 3), np.float32)}, "identity_basis"),
    ({"identity_basis": np.full((2, 8, 3), np.nan, np.float32)}, "identity_basis"),
    ({"expression_basis": np.full((1, 8, 3), np.inf, np.float32)}, "expression_basis"),
    ({"expression_names": np.array(["a", "b"])}, "expression_names"),
    ({"faces": np.array([[0, 1, 2, 9]], np.int32),
      "face_uv_indices": np.array([[0, 1, 2, 3]], np.int32)}, "triangles"),
    ({"face_uv_indices": np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.int32)}, "face_uv_indices"),
    ({"face_uv_indices": np.array([[0, 1, 2, 3], [4, 5, 6, 99]], np.int32),
      "faces": np.array([[0, 1, 2, 3], [4, 5, 6, 7]], np.int32)}, "uv_triangles"),
    ({"uv": np.zeros((8, 2), np.int32)}, "uv"),
])
def test_bad_ict_npz_names_file_and_key(tmp_path, override, field):
    p = _fake_ict(tmp_path / "bad", **override)
    with pytest.raises(ModelFormatError) as ei:
        load_ict(p)
    assert ei.value.field == field
    assert str(p) in str(ei.value)


def test_bad_ict_files(tmp_path, ict_dir):
    p = _fake_ict(tmp_path / "f")
    with pytest.raises(ModelFormatError, match="nope.npz"):
        load_ict(tmp_path / "f" / "nope.npz")
    cut = tmp_path / "cut.npz"  # truncated copy of the real staged file
    with open(ict_dir / "ict_face_model_light.npz", "rb") as f:
        cut.write_bytes(f.read(1_000_000))
    shutil.copy(tmp_path / "f" / "vertex_indices.json", tmp_path / "vertex_indices.json")
    with pytest.raises(ModelFormatError, match="cut.npz"):
        load_ict(cut)
    # vertex_indices.json: missing, not JSON, wrong landmark count, id out of range
    js = tmp_path / "f" / "vertex_indices.json"
    for text, msg in [(None, "not found"), ("{oops", "not valid JSON"),
                      ('{"idx_to_landmark_verts": [1, 2]}', "68 landmark"),
                      (json.dumps({"idx_to_landmark_verts": [8] * 68}), r"\[0, 8\)"),
                      ('{"expressions": []}', "missing key")]:
        if text is None:
            js.unlink()
        else:
            js.write_text(text)
        with pytest.raises(ModelFormatError, match=msg) as ei:
            load_ict(p)
        assert "vertex_indices.json" in str(ei.value)
        if text is not None and "landmark" in text:
            assert ei.value.field == "idx_to_landmark_verts"
    no_neutral = tmp_path / "empty"
    no_neutral.mkdir()
    with pytest.raises(ModelFormatError, match="generic_neutral_mesh.obj"):
        load_ict(no_neutral)


# ------------------------------------------------------------------------------------------------
# The embedded default model
# ------------------------------------------------------------------------------------------------

def test_load_default_without_data_dir(monkeypatch):
    monkeypatch.delenv("JAXFACE_DATA", raising=False)
    m = load_default()
    assert (m.n_vertices, m.n_identity, m.n_expression) == (17202, 100, 53)
    assert m.expression_kind == "blendshape" and m.units == "mm"
    assert len(m.landmarks["ibug68"]) == 68 and "ibug68" in m.contours
    assert {"face", "head_neck", "eyes", "mouth", "eye_sockets"} <= set(m.regions)
    assert "teeth" not in m.regions
    assert load_default() is m  # cached ...
    with pytest.raises(ValueError, match="read-only"):
        np.asarray(m.mean)[0, 0] = 1.0  # ... and immutable
    assert default_model_path().is_file()
    assert default_model_path().stat().st_size <= 10 * 1024 * 1024
    lic = default_model_path().parent / "LICENSE-ICT-FaceKit"
    assert "MIT License" in lic.read_text() and "Kalle Bladin" in lic.read_text()


def test_default_model_under_jit_vmap_grad():
    m = load_default()
    rng = np.random.default_rng(1)
    A = rng.standard_normal((3, m.n_identity)).astype(np.float32)
    E = rng.uniform(0, 1, (3, m.n_expression)).astype(np.float32)
    out = jax.jit(jax.vmap(vertices, in_axes=(None, 0, 0)))(m, A, E)
    for i in range(3):
        np.testing.assert_allclose(out[i], np_vertices(m, A[i], E[i]), atol=1e-3)
    w = rng.normal(size=(68, 3)).astype(np.float32)

    def f(a, e):
        return (w * landmarks(m, vertices(m, a, e))).sum()

    ga, ge = jax.jit(jax.grad(f, argnums=(0, 1)))(A[0], E[0])
    ids = np.asarray(m.landmarks["ibug68"].indices)[:, 0]
    ref_a = np.einsum("klc,lc->k", np.asarray(m.identity_basis, np.float64)[:, ids], w)
    ref_e = np.einsum("klc,lc->k", np.asarray(m.expression_basis, np.float64)[:, ids], w)
    np.testing.assert_allclose(ga, ref_a, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ge, ref_e, rtol=1e-4, atol=1e-3)


def test_default_agrees_with_full_model(full):
    m = load_default()
    mask = np.logical_or.reduce([np.asarray(full.regions[p]) for p in
                                 ("face", "head_neck", "mouth_socket", "eye_sockets",
                                  "eyeballs")])
    np.testing.assert_array_equal(np.flatnonzero(mask), DEFAULT_IDS)
    np.testing.assert_array_equal(m.mean, np.asarray(full.mean)[DEFAULT_IDS])  # not quantised
    for f in ("identity_basis", "expression_basis"):
        err = np.abs(np.asarray(getattr(m, f)) - np.asarray(getattr(full, f))[:, DEFAULT_IDS])
        assert err.max() <= BASIS_ATOL, f
    assert m.expression_names == full.expression_names
    rng = np.random.default_rng(7)
    a, e = rng.standard_normal(100), rng.uniform(0, 1, 53)
    d = np.linalg.norm(np_vertices(m, a, e) - np_vertices(full, a, e)[DEFAULT_IDS], axis=1)
    assert d.max() < 0.05  # mm; measured 0.034 mm worst case
    # landmarks, contours and regions survived restrict (same points, same candidates)
    np.testing.assert_array_equal(
        DEFAULT_IDS[np.asarray(m.landmarks["ibug68"].indices)],
        np.asarray(full.landmarks["ibug68"].indices))
    c, cf = np.asarray(m.contours["ibug68"].candidates), np.asarray(
        full.contours["ibug68"].candidates)
    np.testing.assert_array_equal(np.where(c >= 0, DEFAULT_IDS[c], -1), cf)
    for k, r in m.regions.items():
        np.testing.assert_array_equal(r, np.asarray(full.regions[k])[DEFAULT_IDS], err_msg=k)
    # no orphan triangles, every kept triangle maps to a full-model triangle
    tri = DEFAULT_IDS[np.asarray(m.triangles)]
    full_set = {tuple(t) for t in np.asarray(full.triangles)}
    assert all(tuple(t) in full_set for t in tri[:: max(1, len(tri) // 500)])
    assert m.n_triangles == int(mask[np.asarray(full.triangles)].all(axis=1).sum())


@pytest.mark.slow
def test_build_script_reproduces_committed_asset(tmp_path, data_dir):
    out = tmp_path / "default_model.npz"
    subprocess.run([sys.executable, str(REPO / "scripts" / "build_default_model.py"),
                    "--data", str(data_dir), "--out", str(out)], check=True, cwd=REPO)
    assert out.read_bytes() == default_model_path().read_bytes()
