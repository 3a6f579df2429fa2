"""Exception types raised at jaxface's public boundaries.

Every error a user can trigger with bad input is one of these, with a message that names the
file (where there is one) and the field or key at fault. Nothing below a public function should
let a bare ``KeyError``/``IndexError`` from NumPy escape.
"""

from __future__ import annotations


class JaxfaceError(Exception):
    """Base class of every jaxface error."""


class ModelFormatError(JaxfaceError, ValueError):
    """A morphable-model file or array set is malformed, truncated or of the wrong kind.

    Attributes:
      source: the file (or a short description of the in-memory source).
      field: the key or field at fault, when there is one.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        parts = []
        if source:
            parts.append(str(source))
        if field:
            parts.append(f"field {field!r}")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class MeshFormatError(ModelFormatError):
    """A mesh file (OBJ, PLY, ...) cannot be parsed."""


class DataNotFoundError(JaxfaceError, FileNotFoundError):
    """A data folder or file that a function needs is missing (see ``JAXFACE_DATA``)."""
