"""Reading any supported model file, and a local cache of models the user is entitled to.

* :func:`load_any` reads a model file of any supported format (``FORMATS``) into a
  :class:`MorphableModel` (``format="auto"`` guesses from the extension and content).
* :func:`add_model` copies a model file (a path, ``file://`` or ``http(s)://`` URL) into the
  cache directory ``$JAXFACE_HOME`` (default ``~/.cache/jaxface``) after verifying its SHA-256,
  converts it to a jaxface ``.npz`` and records where it came from. Licensed models (BFM, FLAME,
  SFM) cannot be redistributed, so users fetch them themselves and register them once.
* :func:`load_model` finds ``"default"``, a registered name or a file path.

Cache layout::

    $JAXFACE_HOME/models/<name>.npz     the converted model (jaxface npz, no pickle)
    $JAXFACE_HOME/models/<name>.json    {"name", "sha256", "source", "format", "file", "added"}
    $JAXFACE_HOME/sources/<name>/<file> the verified original file
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxface.errors import DataNotFoundError, JaxfaceError, ModelFormatError
from jaxface.models.morphable import MorphableModel, load_npz, save_npz

PathLike = str | os.PathLike


class ChecksumError(JaxfaceError):
    """The SHA-256 of a downloaded/copied model file differs from the expected one."""


def jaxface_home() -> Path:
    """The cache directory: ``$JAXFACE_HOME``, default ``~/.cache/jaxface``."""
    env = os.environ.get("JAXFACE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxface"


# ------------------------------------------------------------------------------------------------
# Formats
# ------------------------------------------------------------------------------------------------

def _bfm2009(p, lm, ct):
    from jaxface.models.bfm import load_bfm2009
    return load_bfm2009(p, landmarks=lm, contours=ct)


def _bfm2017(p, lm, ct):
    from jaxface.models.bfm import load_bfm2017
    return load_bfm2017(p, landmarks=lm, contours=ct)


def _deep3d(p, lm, ct):
    _no_extras("deep3d", lm, ct)
    from jaxface.models.bfm import load_deep3d_bfm
    return load_deep3d_bfm(p)


def _flame(p, lm, ct):
    from jaxface.models.flame import load_flame
    files = [f for f in (lm, ct) if f is not None]  # ct: the dynamic (jawline) embedding
    return load_flame(p, landmarks=files or None)


def _sfm(p, lm, ct):
    from jaxface.models.sfm import load_sfm
    return load_sfm(p, landmarks=lm, contours=ct)


def _gnm(p, lm, ct):
    _no_extras("gnm", lm, ct)
    from jaxface.models.gnm import load_gnm
    return load_gnm(p)


def _ict(p, lm, ct):
    _no_extras("ict", lm, ct)
    from jaxface.models.ict import load_ict
    return load_ict(p)


def _mediapipe(p, lm, ct):
    _no_extras("mediapipe", lm, ct)
    from jaxface.models.mediapipe import load_mediapipe
    return load_mediapipe(p)


def _npz(p, lm, ct):
    _no_extras("npz", lm, ct)
    return load_npz(p)


def _no_extras(fmt: str, lm: Any, ct: Any) -> None:
    if lm is not None or ct is not None:
        raise ValueError(f"format {fmt!r} takes no "
                         f"{'landmark mapping' if lm is not None else 'contour file'}")


Loader = Callable[[Path, Any, Any], MorphableModel]
FORMATS: dict[str, tuple[Loader, str]] = {
    "bfm2009": (_bfm2009, "Basel Face Model 2009 01_MorphableModel.mat"),
    "bfm2017": (_bfm2017, "Basel Face Model 2017/2019 .h5 (needs h5py)"),
    "deep3d": (_deep3d, "Deep3DFaceRecon BFM_model_front.mat"),
    "flame": (_flame, "FLAME generic_model.pkl / flame2023.pkl (no chumpy needed)"),
    "sfm": (_sfm, "Surrey Face Model / eos .bin"),
    "gnm": (_gnm, "Google GNM Head gnm_head.npz (v3)"),
    "ict": (_ict, "ICT-FaceKit ict_face_model_light.npz or its folder"),
    "mediapipe": (_mediapipe, "MediaPipe canonical_face_model.obj"),
    "npz": (_npz, "jaxface model .npz"),
}


def guess_format(path: PathLike) -> str:
    """The format of ``path`` from its extension (and, for ``.mat``/``.npz``, its keys)."""
    p = Path(path)
    if p.is_dir():
        return "ict"
    ext = p.suffix.lower()
    if ext == ".h5":
        return "bfm2017"
    if ext == ".pkl":
        return "flame"
    if ext == ".bin":
        return "sfm"
    if ext == ".obj":
        return "mediapipe"
    if ext == ".mat":
        try:
            import scipy.io

            names = {n for n, *_ in scipy.io.whosmat(str(p))}
        except Exception as e:
            raise ModelFormatError(f"not a readable .mat file ({e})", source=str(p)) from e
        if "shapeMU" in names:
            return "bfm2009"
        if "meanshape" in names:
            return "deep3d"
    if ext == ".npz":
        import zipfile

        try:
            with zipfile.ZipFile(p) as z:
                names = set(z.namelist())
        except (zipfile.BadZipFile, OSError) as e:
            raise ModelFormatError(f"not a readable .npz ({e})", source=str(p)) from e
        if "__meta__.npy" in names:
            return "npz"
        return "gnm" if "template_vertex_positions.npy" in names else "ict"
    raise ModelFormatError(f"cannot tell the model format of {p.name!r}; pass --format "
                           f"(one of {', '.join(FORMATS)})", source=str(p))


def load_any(path: PathLike, format: str = "auto", *, landmarks: PathLike | None = None,
             contours: PathLike | None = None) -> MorphableModel:
    """Read a model file of any supported format.

    Args:
      path: the model file (or the ICT-FaceKit folder).
      format: a key of ``FORMATS`` or ``"auto"`` (:func:`guess_format`).
      landmarks: an eos ``ibug_to_*.txt`` mapping (bfm2009, bfm2017, sfm) or a FLAME landmark
        embedding (flame).
      contours: an eos ``*_model_contours.json`` (bfm2009, bfm2017, sfm) or FLAME's dynamic
        jawline embedding ``flame_dynamic_embedding.npy`` (flame).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataNotFoundError(f"model file {str(p)!r} does not exist")
    fmt = guess_format(p) if format == "auto" else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown model format {format!r}; expected one of "
                         f"{', '.join(FORMATS)} or 'auto'")
    return FORMATS[fmt][0](p, landmarks, contours)


# ------------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _check_name(name: str) -> str:
    if not _NAME.match(name) or name == "default" or name.endswith((".npz", ".json")):
        raise ValueError(f"model name {name!r} must match [a-z0-9][a-z0-9_.-]* (max 64), not be "
                         "'default' and not end in .npz/.json")
    return name


def _normalise_sha256(hexdigest: str) -> str:
    h = hexdigest.strip().lower()
    if h.startswith("sha256:"):
        h = h[7:]
    if not re.fullmatch(r"[0-9a-f]{64}", h):
        raise ValueError(f"--sha256 must be 64 hexadecimal digits, got {hexdigest!r}")
    return h


def _open_source(source: str):
    """A binary stream and a file name for a path or URL (file://, http://, https://)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https", "file"):
        if parsed.scheme == "file":
            local = Path(urllib.request.url2pathname(parsed.path))
            if not local.is_file():
                raise DataNotFoundError(f"{source!r}: no such file")
        try:
            stream = urllib.request.urlopen(source, timeout=60)  # noqa: S310 (scheme checked)
        except OSError as e:
            raise DataNotFoundError(f"cannot open {source!r} ({e})") from e
        return stream, Path(urllib.parse.unquote(parsed.path)).name or "model"
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise ValueError(f"unsupported URL scheme {parsed.scheme!r} (use a path, file://, "
                         "http:// or https://)")
    p = Path(source).expanduser()
    if not p.exists():
        raise DataNotFoundError(f"{source!r}: no such file")
    if p.is_dir():
        raise ValueError(f"{source!r} is a folder; pass the model file itself")
    return open(p, "rb"), p.name


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def add_model(name: str, source: str | PathLike, sha256: str, *, format: str = "auto",
              landmarks: PathLike | None = None, contours: PathLike | None = None,
              home: PathLike | None = None, overwrite: bool = False) -> Path:
    """Verify, store and convert a model file into the cache; returns the converted ``.npz``.

    The file is streamed into a temporary file in the cache while its SHA-256 is computed; a
    mismatch deletes it and raises :class:`ChecksumError` (nothing is stored). The verified file
    is kept under ``sources/<name>/`` and converted with :func:`load_any` to
    ``models/<name>.npz``; a ``models/<name>.json`` records name, checksum, source and format.

    Args:
      name: the cache name (``[a-z0-9][a-z0-9_.-]*``), e.g. ``"bfm2017"``.
      source: a path, ``file://`` URL or ``http(s)://`` URL.
      sha256: the expected hex digest (the one published with the model, or of your copy).
      format / landmarks / contours: as :func:`load_any`.
      home: cache directory (default :func:`jaxface_home`).
      overwrite: replace an existing entry of that name.
    """
    name = _check_name(name)
    want = _normalise_sha256(sha256)
    root = Path(home).expanduser() if home is not None else jaxface_home()
    models = root / "models"
    out = models / f"{name}.npz"
    if out.exists() and not overwrite:
        raise FileExistsError(f"model {name!r} is already in {str(models)!r} (use --overwrite)")
    src_dir = root / "sources" / name
    stream, filename = _open_source(os.fspath(source))
    root.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=root)
    try:
        with stream, os.fdopen(fd, "wb") as f:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
                f.write(block)
        got = h.hexdigest()
        if got != want:
            raise ChecksumError(f"SHA-256 mismatch for {os.fspath(source)!r}: expected {want}, "
                                f"got {got}; nothing was stored")
        staged = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root)) / filename
        shutil.move(tmp, staged)
        try:
            model = load_any(staged, format, landmarks=landmarks, contours=contours)
            fmt = guess_format(staged) if format == "auto" else format
            models.mkdir(parents=True, exist_ok=True)
            tmp_npz = models / f".{name}.tmp.npz"
            save_npz(model, tmp_npz)
            if src_dir.exists():
                shutil.rmtree(src_dir)
            src_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staged.parent), src_dir)
            os.replace(tmp_npz, out)
        finally:
            if staged.parent.exists():
                shutil.rmtree(staged.parent, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = dict(name=name, sha256=want, source=os.fspath(source), format=fmt, file=filename,
                added=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    (models / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def list_models(home: PathLike | None = None) -> dict[str, dict[str, Any]]:
    """name -> manifest of every cached model."""
    root = Path(home).expanduser() if home is not None else jaxface_home()
    out = {}
    for npz in sorted((root / "models").glob("*.npz")):
        if npz.name.startswith("."):
            continue
        man = npz.with_suffix(".json")
        try:
            out[npz.stem] = json.loads(man.read_text(encoding="utf-8")) if man.is_file() else {}
        except json.JSONDecodeError:
            out[npz.stem] = {}
    return out


def load_model(name: str | PathLike, *, home: PathLike | None = None) -> MorphableModel:
    """``"default"`` (the embedded ICT-FaceKit model), a name added with :func:`add_model`
    (``"bfm2017"``), or the path of a model file of any supported format."""
    if isinstance(name, str) and name == "default":
        from jaxface.models.ict import load_default

        return load_default()
    p = Path(name).expanduser()
    if p.exists():
        return load_any(p)
    s = os.fspath(name)
    if _NAME.match(s):
        root = Path(home).expanduser() if home is not None else jaxface_home()
        cached = root / "models" / f"{s}.npz"
        if cached.is_file():
            return load_npz(cached)
        have = ", ".join(list_models(root)) or "none"
        raise DataNotFoundError(
            f"no model {s!r} in {str(root / 'models')!r} (cached: {have}); add it with "
            f"`jaxface models add {s} FILE_OR_URL --sha256 HEX`")
    raise DataNotFoundError(f"{s!r} is neither 'default', a cached model name nor a file")
