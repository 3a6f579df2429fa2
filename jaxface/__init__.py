"""jaxface: 3D face reconstruction on one differentiable, jit-compiled JAX pipeline.

    params -> 3D Morphable Model -> vertices -> camera -> rasteriser -> shading -> image
"""

from jaxface.errors import DataNotFoundError, JaxfaceError, MeshFormatError, ModelFormatError
from jaxface.models import MorphableModel, landmarks, vertices

__version__ = "0.1.0"

__all__ = [
    "DataNotFoundError",
    "JaxfaceError",
    "MeshFormatError",
    "ModelFormatError",
    "MorphableModel",
    "landmarks",
    "vertices",
]
