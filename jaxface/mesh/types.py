"""The ``Mesh`` pytree: a triangle mesh with optional UVs, per-vertex colours and normals."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxface._pytree import pytree_dataclass, static_field


@pytree_dataclass
class Mesh:
    """A triangle mesh (a frozen dataclass and a JAX pytree).

    Array fields are pytree leaves (NumPy on the host, ``jax.Array`` inside jit); ``None`` means
    "absent". ``material_names`` and ``mtllib`` are static metadata.

    Attributes:
      vertices: (V, 3) float32 positions (mm by project convention).
      triangles: (T, 3) int32 vertex ids, counter-clockwise seen from the outside.
      uv: (Vt, 2) float32 texture coordinates, or None. OBJ convention: v = 0 at the bottom.
      uv_triangles: (T, 3) int32 ids into ``uv`` per triangle corner, or None. When ``uv`` is
        given and ``uv_triangles`` is None, ``uv`` is per vertex (Vt == V, same ids as
        ``triangles``).
      colors: (V, 3) float32 per-vertex RGB in [0, 1], or None.
      normals: (V, 3) float32 per-vertex unit normals, or None.
      polygon_index: (T,) int32 index of the source polygon of each triangle (file readers fill
        it; fan triangulation of an n-gon gives n - 2 consecutive triangles), or None.
      triangle_material: (T,) int32 index into ``material_names`` (-1: no material), or None.
      material_names: static tuple of material names (OBJ ``usemtl``).
      mtllib: static name of the OBJ material library (``mtllib``), or None.
    """

    vertices: Any
    triangles: Any
    uv: Any = None
    uv_triangles: Any = None
    colors: Any = None
    normals: Any = None
    polygon_index: Any = None
    triangle_material: Any = None
    material_names: tuple[str, ...] = static_field(default=())
    mtllib: str | None = static_field(default=None)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[-2])

    @property
    def n_triangles(self) -> int:
        return int(self.triangles.shape[-2])

    def corner_uv_ids(self) -> Any:
        """(T, 3) ids into ``uv`` for each triangle corner (``triangles`` for per-vertex UVs)."""
        if self.uv is None:
            raise ValueError("mesh has no uv")
        return self.triangles if self.uv_triangles is None else self.uv_triangles


def make_mesh(
    vertices: Any,
    triangles: Any,
    *,
    uv: Any = None,
    uv_triangles: Any = None,
    colors: Any = None,
    normals: Any = None,
    polygon_index: Any = None,
    triangle_material: Any = None,
    material_names: tuple[str, ...] = (),
    mtllib: str | None = None,
) -> Mesh:
    """Build a host-side ``Mesh`` with canonical dtypes, validating shapes and index ranges.

    Raises:
      ValueError: with a precise message for wrong shapes or out-of-range indices.
    """
    v = np.asarray(vertices, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
    t = _index_array(triangles, "triangles", v.shape[0])
    nt = t.shape[0]
    uv_a = uvt = None
    if uv is not None:
        uv_a = np.asarray(uv, dtype=np.float32)
        if uv_a.ndim != 2 or uv_a.shape[1] != 2:
            raise ValueError(f"uv must have shape (Vt, 2), got {uv_a.shape}")
        if uv_triangles is not None:
            uvt = _index_array(uv_triangles, "uv_triangles", uv_a.shape[0])
            if uvt.shape[0] != nt:
                raise ValueError(f"uv_triangles has {uvt.shape[0]} rows, triangles has {nt}")
        elif uv_a.shape[0] != v.shape[0]:
            raise ValueError(
                f"per-vertex uv needs {v.shape[0]} rows, got {uv_a.shape[0]}; "
                "pass uv_triangles for per-corner uv"
            )
    elif uv_triangles is not None:
        raise ValueError("uv_triangles given without uv")
    c = None
    if colors is not None:
        c = np.asarray(colors, dtype=np.float32)
        if c.shape != v.shape:
            raise ValueError(f"colors must have shape {v.shape}, got {c.shape}")
    n = None
    if normals is not None:
        n = np.asarray(normals, dtype=np.float32)
        if n.shape != v.shape:
            raise ValueError(f"normals must have shape {v.shape}, got {n.shape}")
    pi = None
    if polygon_index is not None:
        pi = np.asarray(polygon_index, dtype=np.int32).reshape(-1)
        if pi.shape[0] != nt:
            raise ValueError(f"polygon_index has {pi.shape[0]} entries, triangles has {nt}")
    tm = None
    if triangle_material is not None:
        tm = np.asarray(triangle_material, dtype=np.int32).reshape(-1)
        if tm.shape[0] != nt:
            raise ValueError(f"triangle_material has {tm.shape[0]} entries, triangles has {nt}")
        if tm.size and (tm.min() < -1 or tm.max() >= len(material_names)):
            raise ValueError("triangle_material out of range of material_names")
    return Mesh(
        vertices=v,
        triangles=t,
        uv=uv_a,
        uv_triangles=uvt,
        colors=c,
        normals=n,
        polygon_index=pi,
        triangle_material=tm,
        material_names=tuple(str(m) for m in material_names),
        mtllib=mtllib,
    )


def _index_array(a: Any, name: str, n: int) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape (T, 3), got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{name} must hold integer indices")
    arr = arr.astype(np.int32)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} indices must lie in [0, {n}), got [{arr.min()}, {arr.max()}]")
    return arr
