"""OBJ / PLY reading and writing."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.errors import MeshFormatError
from jaxface.mesh import (
    Mesh,
    fan_triangulate,
    make_mesh,
    read_mesh,
    read_obj,
    read_ply,
    write_mesh,
    write_obj,
    write_ply,
)

OBJ_TEXT = """\
# a comment
mtllib scene.mtl
o thing
v 0 0 0
v 1 0 0  # trailing comment
v 1 1 0
v 0 1 0
v 0.5 1.5 0
vt 0 0
vt 1 0
vt 1 1
vt 0 1
vt 0.5 1 0
vn 0 0 1
usemtl skin
f 1/1/1 2/2/1 3/3/1 4/4/1
usemtl eyes
f -2/-2/1 -3/-3/1 -1/-1/1
"""


def _write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "w":
        p.write_text(text)
    else:
        p.write_bytes(text)
    return p


def test_read_obj_full_syntax(tmp_path):
    m = read_obj(_write(tmp_path, "a.obj", OBJ_TEXT))
    assert m.vertices.dtype == np.float32 and m.vertices.shape == (5, 3)
    assert m.triangles.dtype == np.int32
    # quad (1 2 3 4) -> (0,1,2), (0,2,3); negative ids relative to the 5 vertices so far.
    np.testing.assert_array_equal(m.triangles, [[0, 1, 2], [0, 2, 3], [3, 2, 4]])
    np.testing.assert_array_equal(m.uv_triangles, [[0, 1, 2], [0, 2, 3], [3, 2, 4]])
    np.testing.assert_allclose(m.uv[4], [0.5, 1.0])
    np.testing.assert_array_equal(m.polygon_index, [0, 0, 1])
    assert m.material_names == ("skin", "eyes")
    np.testing.assert_array_equal(m.triangle_material, [0, 0, 1])
    assert m.mtllib == "scene.mtl"
    # every corner points at vn 1 -> per-vertex normals (0, 0, 1) on used vertices.
    np.testing.assert_allclose(m.normals, np.tile([0, 0, 1.0], (5, 1)))
    assert m.colors is None


def test_read_obj_corner_forms_and_whitespace(tmp_path):
    text = (
        "v 0 0 0\r\n\tv 1 0 0\r\n  v 0 1 0\r\nv 0 0 1 \\\r\n\r\n"
        "vn 0 0 1\r\nf 1//1 2//1 3//1\r\nf 1 3 4\r\n"
    )
    m = read_obj(_write(tmp_path, "b.obj", text.encode(), mode="b"))
    np.testing.assert_array_equal(m.triangles, [[0, 1, 2], [0, 2, 3]])
    assert m.uv is None
    assert m.normals is None  # the second face has no normals


def test_read_obj_mixed_corner_forms(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nvt 1 1\nf 1/1 2/2/ 3\nf 2/ 4/1 3/2\n"
    m = read_obj(_write(tmp_path, "mixed.obj", text))
    np.testing.assert_array_equal(m.triangles, [[0, 1, 2], [1, 3, 2]])
    assert m.uv_triangles is None  # not every corner has a vt


def test_read_obj_colors(tmp_path):
    text = "v 0 0 0 1 0.5 0\nv 1 0 0 0 0 1\nv 0 1 0 0.25 0.25 0.25\nf 1 2 3\n"
    m = read_obj(_write(tmp_path, "c.obj", text))
    np.testing.assert_allclose(m.colors, [[1, 0.5, 0], [0, 0, 1], [0.25, 0.25, 0.25]])
    text255 = "v 0 0 0 255 0 51\nv 1 0 0 0 0 0\nv 0 1 0 0 0 0\nf 1 2 3\n"
    m = read_obj(_write(tmp_path, "c255.obj", text255))
    np.testing.assert_allclose(m.colors[0], [1.0, 0.0, 0.2], atol=1e-6)


def test_read_obj_triangulate_false(tmp_path):
    with pytest.raises(MeshFormatError, match=r"a\.obj.*line 16.*polygon with 4"):
        read_obj(_write(tmp_path, "a.obj", OBJ_TEXT), triangulate=False)
    m = read_obj(_write(tmp_path, "t.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"), False)
    np.testing.assert_array_equal(m.triangles, [[0, 1, 2]])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("v 0 0 0\nv 1 0 x\nv 0 1 0\nf 1 2 3\n", r"bad\.obj: line 2: cannot parse"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", r"line 4: vertex index 4 out of range"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n", r"line 4: face with 2 corners"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 -4\n", r"line 4: .*index -4 out of range"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/9 2/1 3/1\nvt 0 0\n", r"line 4: texture index 9"),
        ("v 0 0 0\nv 1 0 0 0 0\nv 0 1 0\nf 1 2 3\n", r"line 2: 'v'"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 0\n", r"line 4"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3.5\n", r"line 4: cannot parse"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/1/1/1 2 3\n", r"line 4: bad face corner"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nv 1 2", r"line 5: 'v' lines must all have"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/1 2/", r"line 4: face with 2 corners"),
        ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/x", r"line 5: cannot parse"),
    ],
)
def test_read_obj_errors_name_file_and_line(tmp_path, text, pattern):
    with pytest.raises(MeshFormatError, match=pattern):
        read_obj(_write(tmp_path, "bad.obj", text))


def test_read_obj_point_cloud_and_empty(tmp_path):
    m = read_obj(_write(tmp_path, "pc.obj", "v 0 0 0\nv 1 1 1\nvt 0 0\nvt 1 1\n"))
    assert m.vertices.shape == (2, 3) and m.triangles.shape == (0, 3)
    m = read_obj(_write(tmp_path, "empty.obj", "# nothing\n"))
    assert m.vertices.shape == (0, 3) and m.triangles.shape == (0, 3)


def test_read_obj_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_obj(tmp_path / "nope.obj")


def test_fan_triangulate_order():
    ids, poly = fan_triangulate(np.array([3, 5, 4]))
    np.testing.assert_array_equal(
        ids, [[0, 1, 2], [3, 4, 5], [3, 5, 6], [3, 6, 7], [8, 9, 10], [8, 10, 11]]
    )
    np.testing.assert_array_equal(poly, [0, 1, 1, 1, 2, 2])


def _random_mesh(rng, per_corner_uv=True, colors=True, normals=True):
    v = rng.normal(size=(7, 3)).astype(np.float32)
    t = np.array([[0, 1, 2], [0, 2, 3], [3, 2, 4], [4, 5, 6], [6, 5, 1]], np.int32)
    kw = {}
    if per_corner_uv:
        kw["uv"] = rng.random((9, 2)).astype(np.float32)
        kw["uv_triangles"] = rng.integers(0, 9, size=(5, 3)).astype(np.int32)
    else:
        kw["uv"] = rng.random((7, 2)).astype(np.float32)
    if colors:
        kw["colors"] = (rng.integers(0, 256, size=(7, 3)) / 255.0).astype(np.float32)
    if normals:
        n = rng.normal(size=(7, 3))
        kw["normals"] = (n / np.linalg.norm(n, axis=1, keepdims=True)).astype(np.float32)
    return make_mesh(v, t, **kw)


@pytest.mark.parametrize("per_corner_uv", [True, False])
def test_obj_round_trip(tmp_path, rng, per_corner_uv):
    m = _random_mesh(rng, per_corner_uv=per_corner_uv)
    p = tmp_path / "rt.obj"
    write_obj(p, m, mtl_name="face_texture")
    text = p.read_text()
    assert "mtllib rt.mtl" in text and "usemtl face_texture" in text
    r = read_obj(p)
    np.testing.assert_array_equal(r.vertices, m.vertices)  # 9 significant digits: exact
    np.testing.assert_array_equal(r.triangles, m.triangles)
    np.testing.assert_array_equal(r.colors, m.colors)
    np.testing.assert_array_equal(r.uv[r.uv_triangles], m.uv[m.corner_uv_ids()])
    np.testing.assert_allclose(r.normals, m.normals, atol=1e-6)
    assert r.material_names == ("face_texture",) and r.mtllib == "rt.mtl"


def test_obj_round_trip_plain(tmp_path, rng):
    m = make_mesh(rng.normal(size=(4, 3)), [[0, 1, 2], [0, 2, 3]])
    p = tmp_path / "plain.obj"
    write_obj(p, m)
    assert "mtllib" not in p.read_text()
    r = read_obj(p)
    np.testing.assert_array_equal(r.vertices, m.vertices)
    np.testing.assert_array_equal(r.triangles, m.triangles)
    assert r.uv is None and r.colors is None and r.normals is None


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("per_corner_uv", [True, False])
def test_ply_round_trip(tmp_path, rng, binary, per_corner_uv):
    m = _random_mesh(rng, per_corner_uv=per_corner_uv)
    p = tmp_path / "rt.ply"
    write_ply(p, m, binary=binary)
    r = read_ply(p)
    np.testing.assert_array_equal(r.vertices, m.vertices)
    np.testing.assert_array_equal(r.triangles, m.triangles)
    np.testing.assert_allclose(r.colors, m.colors, atol=1e-6)
    np.testing.assert_array_equal(r.normals, m.normals)
    np.testing.assert_array_equal(r.uv[r.corner_uv_ids()], m.uv[m.corner_uv_ids()])
    assert (r.uv_triangles is None) == (not per_corner_uv)


def _ply_header(fmt, nv, nf, vprops, fprops):
    lines = ["ply", f"format {fmt} 1.0", "comment test", f"element vertex {nv}"]
    lines += [f"property {t} {n}" for t, n in vprops]
    lines += [f"element face {nf}"] + [f"property {p}" for p in fprops] + ["end_header"]
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("bo", ["<", ">"])
def test_read_ply_binary_polygons_and_float_colors(tmp_path, bo):
    fmt = "binary_little_endian" if bo == "<" else "binary_big_endian"
    verts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 0]], np.float32)
    cols = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0, 0, 0]], np.float32)
    header = _ply_header(
        fmt,
        5,
        2,
        [("float", "x"), ("float", "y"), ("float", "z"), ("float", "red"), ("float", "green"),
         ("float", "blue"), ("float", "s"), ("float", "t")],
        ["list uchar int vertex_indices", "uint flags"],
    )  # fmt: skip
    vrec = np.concatenate([verts, cols, verts[:, :2]], axis=1).astype(bo + "f4").tobytes()
    f1 = np.array([4], "u1").tobytes() + np.array([0, 1, 2, 3], bo + "i4").tobytes()
    f2 = np.array([3], "u1").tobytes() + np.array([1, 4, 2], bo + "i4").tobytes()
    flag = np.array([7], bo + "u4").tobytes()
    p = _write(tmp_path, "poly.ply", header + vrec + f1 + flag + f2 + flag, mode="b")
    m = read_ply(p)
    np.testing.assert_array_equal(m.vertices, verts)
    np.testing.assert_allclose(m.colors, cols)
    np.testing.assert_array_equal(m.uv, verts[:, :2])
    assert m.uv_triangles is None
    np.testing.assert_array_equal(m.triangles, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])
    np.testing.assert_array_equal(m.polygon_index, [0, 0, 1])
    with pytest.raises(MeshFormatError, match="polygon with 4"):
        read_ply(p, triangulate=False)


def test_read_ply_ascii_texture_uv_names_and_polygons(tmp_path):
    header = _ply_header(
        "ascii",
        4,
        2,
        [("double", "x"), ("double", "y"), ("double", "z"), ("uchar", "red"), ("uchar", "green"),
         ("uchar", "blue"), ("float", "texture_u"), ("float", "texture_v")],
        ["list int uint vertex_index"],
    )  # fmt: skip
    body = (
        "0 0 0 255 0 0 0 0\n1 0 0 0 255 0 1 0\n1 1 0 0 0 255 1 1\n0 1 0 0 0 0 0 1\n"
        "4 0 1 2 3\n3 0 2 3\n"
    )
    m = read_ply(_write(tmp_path, "a.ply", header + body.encode(), mode="b"))
    np.testing.assert_array_equal(m.triangles, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    np.testing.assert_allclose(m.colors[:3], np.eye(3))
    np.testing.assert_allclose(m.uv[2], [1, 1])


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"plx\n", r"line 1: not a PLY file"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", r"end_header"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty flot x\nend_header\n1\n",
         r"line 4: bad property"),
        (b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
         b"property float z\nend_header\n0 0 0\n", r"element 'vertex': truncated"),
        (b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
         b"property float z\nend_header\n0 0 0\n1 a 0\n", r"line 9: element 'vertex' row 1"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\n"
         b"property float y\nproperty float z\nend_header\n" + b"\0" * 20,
         r"element 'vertex': truncated data at row 1"),
        (b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
         b"property float z\nelement face 1\nproperty list uchar int vertex_indices\n"
         b"end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 5\n", r"row 0: vertex index out of range"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
         b"end_header\n0 0\n", r"no property 'z'"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n"
         b"property float y\nproperty float z\nelement face 2\n"
         b"property list uchar int vertex_indices\nend_header\n" + b"\0" * 36
         + b"\x03" + b"\0" * 12 + b"\x03\0\0",
         r"element 'face': truncated data at row 1"),
        (b"ply\nformat binary_big_endian 1.0\nelement vertex 1\nproperty list uchar float x\n"
         b"end_header\n\x05\0\0\0\0", r"element 'vertex': truncated data at row 0"),
    ],
)  # fmt: skip
def test_read_ply_errors(tmp_path, data, pattern):
    with pytest.raises(MeshFormatError, match=pattern):
        read_ply(_write(tmp_path, "bad.ply", data, mode="b"))


def test_read_write_mesh_dispatch(tmp_path, rng):
    m = _random_mesh(rng)
    for ext in ("obj", "ply"):
        write_mesh(tmp_path / f"m.{ext}", m)
        np.testing.assert_array_equal(read_mesh(tmp_path / f"m.{ext}").triangles, m.triangles)
    with pytest.raises(MeshFormatError, match="unsupported mesh extension"):
        read_mesh(tmp_path / "m.stl")


def test_mesh_is_a_pytree(rng):
    m = _random_mesh(rng)
    leaves = jax.tree_util.tree_leaves(m)
    assert len(leaves) == 6  # vertices, triangles, uv, uv_triangles, colors, normals

    @jax.jit
    def centroid(mesh: Mesh):
        return jnp.mean(mesh.vertices[mesh.triangles], axis=(0, 1))

    np.testing.assert_allclose(
        centroid(m), m.vertices[m.triangles].mean(axis=(0, 1)), rtol=1e-5, atol=1e-6
    )
    moved = jax.tree_util.tree_map(lambda x: x, m)
    assert isinstance(moved, Mesh)


def test_make_mesh_validation():
    v = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"vertices must have shape \(V, 3\)"):
        make_mesh(np.zeros((3, 2)), [[0, 1, 2]])
    with pytest.raises(ValueError, match=r"triangles indices must lie in \[0, 3\)"):
        make_mesh(v, [[0, 1, 3]])
    with pytest.raises(ValueError, match="per-vertex uv needs 3 rows"):
        make_mesh(v, [[0, 1, 2]], uv=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="colors must have shape"):
        make_mesh(v, [[0, 1, 2]], colors=np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


def test_read_ict_generic_neutral_mesh(data_dir):
    path = data_dir / "ict-facekit" / "generic_neutral_mesh.obj"
    t0 = time.perf_counter()
    m = read_obj(path)
    elapsed = time.perf_counter() - t0
    assert m.vertices.shape == (26719, 3)
    assert m.uv.shape == (28911, 2)
    assert m.triangles.shape == (52220, 3)
    assert int(m.polygon_index.max()) + 1 == 26384
    ref = np.load(data_dir / "ict-facekit" / "ict_face_model_light.npz")
    np.testing.assert_array_equal(m.triangles, ref["triangles"])
    np.testing.assert_allclose(m.vertices, ref["neutral"], atol=1e-5)
    np.testing.assert_allclose(m.uv, ref["uv"], atol=1e-6)
    assert m.material_names == tuple(str(s) for s in ref["material_names"])
    np.testing.assert_array_equal(m.triangle_material, ref["face_material"][m.polygon_index])
    assert m.mtllib == "ICTFaceModelMaterial.mtl"
    # Generous bound for a loaded shared CPU (typically ~0.15-0.2 s).
    assert elapsed < 2.0, elapsed


def test_read_mediapipe_canonical_face(data_dir, tmp_path):
    m = read_obj(data_dir / "mediapipe-face-geometry" / "canonical_face_model.obj")
    assert m.vertices.shape == (468, 3)
    assert m.triangles.shape == (898, 3)
    assert m.uv.shape == (468, 2) and m.uv_triangles.shape == (898, 3)
    assert m.triangles.min() == 0 and m.triangles.max() == 467
    write_ply(tmp_path / "mp.ply", m)
    r = read_ply(tmp_path / "mp.ply")
    np.testing.assert_array_equal(r.vertices, m.vertices)
    np.testing.assert_array_equal(r.uv[r.uv_triangles], m.uv[m.uv_triangles])
