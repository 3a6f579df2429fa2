"""Where jaxface finds external data (the staged face models and photos).

Code never hard-codes a data location: it takes a path argument or reads ``JAXFACE_DATA``.
"""

from __future__ import annotations

import os
from pathlib import Path

from jaxface.errors import DataNotFoundError

ENV_VAR = "JAXFACE_DATA"


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data root: ``path`` if given, else ``$JAXFACE_DATA``.

    Raises:
      DataNotFoundError: neither is set, or the folder does not exist.
    """
    root = path if path is not None else os.environ.get(ENV_VAR)
    if not root:
        raise DataNotFoundError(
            f"no data folder given and ${ENV_VAR} is not set; point it at the folder that holds "
            "ict-facekit/, aflw2000-3d-subset/, ..."
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"data folder {str(root)!r} does not exist (from ${ENV_VAR})")
    return root


def data_path(*parts: str, root: str | os.PathLike | None = None) -> Path:
    """``data_dir(root) / parts...``, checked to exist."""
    p = data_dir(root).joinpath(*parts)
    if not p.exists():
        raise DataNotFoundError(f"{str(p)!r} not found under the data folder")
    return p
