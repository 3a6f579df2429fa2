"""Mesh utilities: the ``Mesh`` pytree, OBJ/PLY I/O, normals, topology and Laplacians.

I/O and topology are host-side NumPy; normals and the jit form of the Laplacian
(``cotangent_weights`` + ``laplacian_apply``, ``vertex_areas``) are pure JAX.
"""

from jaxface.mesh.io import (
    fan_triangulate,
    read_mesh,
    read_obj,
    read_ply,
    write_mesh,
    write_obj,
    write_ply,
)
from jaxface.mesh.laplacian import (
    corner_cotangents,
    cotangent_laplacian,
    cotangent_weights,
    laplacian_apply,
    laplacian_matrix,
    mass_matrix,
    uniform_laplacian,
    uniform_weights,
    vertex_areas,
)
from jaxface.mesh.normals import face_areas, face_normals, safe_normalize, vertex_normals
from jaxface.mesh.topology import (
    Adjacency,
    boundary_edges,
    boundary_loops,
    boundary_vertices,
    connected_components,
    edges,
    face_adjacency,
    triangle_edge_ids,
    vertex_adjacency,
    vertex_faces,
)
from jaxface.mesh.types import Mesh, make_mesh

__all__ = [
    "Adjacency",
    "Mesh",
    "boundary_edges",
    "boundary_loops",
    "boundary_vertices",
    "connected_components",
    "corner_cotangents",
    "cotangent_laplacian",
    "cotangent_weights",
    "edges",
    "face_adjacency",
    "face_areas",
    "face_normals",
    "fan_triangulate",
    "laplacian_apply",
    "laplacian_matrix",
    "make_mesh",
    "mass_matrix",
    "read_mesh",
    "read_obj",
    "read_ply",
    "safe_normalize",
    "triangle_edge_ids",
    "uniform_laplacian",
    "uniform_weights",
    "vertex_adjacency",
    "vertex_areas",
    "vertex_faces",
    "vertex_normals",
    "write_mesh",
    "write_obj",
    "write_ply",
]
