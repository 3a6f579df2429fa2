"""Pieces shared by the ``jaxface`` commands that fit photos (``demo``, ``fit``, ``predict``):
reading images with clear errors, the per-image loop (progress bar, ``--resume``, failures
recorded in ``failures.json``) and writing the three per-image outputs (``result.json``,
``mesh.obj``, ``overlay.png``)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxface.errors import JaxfaceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class ImageReadError(JaxfaceError):
    """An image file cannot be read or is not a usable picture."""


@contextlib.contextmanager
def failure_log(out: Path) -> Iterator[dict[str, str]]:
    """A ``{file name: reason}`` dict that is written to ``out/failures.json`` (atomically) when
    the block ends, however it ends: this run's failures, ``{}`` when none."""
    failures: dict[str, str] = {}
    try:
        yield failures
    finally:
        tmp = out / "failures.json.tmp"
        tmp.write_text(json.dumps(failures, indent=1))
        os.replace(tmp, out / "failures.json")


def for_each_image(items: Iterable[Any], step: Callable[[Any, Path], bool | None], out: Path,
                   failures: dict[str, str], *, prog: str, resume: bool = False,
                   total: int | None = None) -> tuple[int, int]:
    """Run ``step(item, out / item.stem)`` on every item, with a progress bar (when there are
    several), ``--resume`` and failure recording.

    An item whose ``out/<stem>/result.json`` exists is skipped when ``resume``. A step that
    raises a ``JaxfaceError``, ``OSError`` or ``ValueError`` is recorded in ``failures`` under
    ``item.name`` (and printed) and the loop goes on. A step that returns False did not write
    outputs (it deferred the item) and is not counted as done.

    Returns:
      (items done, items skipped by ``resume``).
    """
    from tqdm import tqdm

    done = skipped = 0
    bar = tqdm(items, total=total, unit="img", file=sys.stderr, disable=total == 1,
               dynamic_ncols=True)
    try:
        for item in bar:
            bar.set_postfix_str(item.stem, refresh=False)
            target = out / item.stem
            if resume and (target / "result.json").is_file():
                skipped += 1
                continue
            try:
                if step(item, target) is not False:
                    done += 1
            except (JaxfaceError, OSError, ValueError) as e:
                failures[item.name] = f"{type(e).__name__}: {e}"
                msg = str(e) if item.name in str(e) else f"{item.name}: {e}"
                tqdm.write(f"{prog}: {msg}", file=sys.stderr)
    finally:
        bar.close()
    return done, skipped


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as HxWx3 float32 in [0, 1]; grey, RGBA and 16-bit files are converted.

    Raises:
      FileNotFoundError: no such file.
      ImageReadError: the file is not a decodable image or has an unusable shape (names the file).
    """
    import imageio.v3 as iio

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {str(p)!r} not found")
    try:
        raw = np.asarray(iio.imread(p))
    except Exception as e:  # imageio raises many types for corrupt data
        raise ImageReadError(f"cannot read image {p}: {type(e).__name__}: {e}") from None
    return check_image(raw, str(p))


def check_image(raw: np.ndarray, source: str) -> np.ndarray:
    """Validate a decoded picture (HxW, HxWx1/3/4; any integer or float dtype) -> HxWx3 float32."""
    from jaxface.viz import to_float

    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim == 4 and raw.shape[0] == 1:  # single-frame animation
        raw = raw[0]
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[-1] not in (3, 4)):
        raise ImageReadError(f"{source}: expected a grey, RGB or RGBA picture, got an array of "
                             f"shape {raw.shape}")
    if raw.shape[0] < 8 or raw.shape[1] < 8:
        raise ImageReadError(f"{source}: image of {raw.shape[1]}x{raw.shape[0]} pixels is too "
                             f"small")
    if raw.dtype == bool:
        raw = raw.astype(np.uint8) * 255
    img = to_float(raw)
    if not np.all(np.isfinite(img)):
        raise ImageReadError(f"{source}: image has NaN or infinite values")
    return img


def write_fit_outputs(out_dir: str | os.PathLike, image: np.ndarray, model, result,
                      observed: np.ndarray | None = None, extra: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
    """Write ``overlay.png``, ``mesh.obj`` and ``result.json`` (last, atomically) for one fit.

    Args:
      out_dir: folder to write into (created).
      image: (H, W, 3) float photo the fit belongs to.
      model: the fitted MorphableModel.
      result: an unbatched FitResult.
      observed: (L, 2) the landmarks that were fitted (drawn in green; the fit's in red).
      extra: keys added to ``result.json`` (e.g. the input file).

    Returns:
      the ``result.json`` payload (``jaxface.fit.result_to_json`` plus ``extra``).
    """
    import imageio.v3 as iio

    from jaxface.fit import model_vertices_camera, result_to_json
    from jaxface.mesh import Mesh, write_obj
    from jaxface.viz import composite, draw_points, shaded_render

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    payload = result_to_json(model, result, (h, w))
    if extra:
        payload.update(extra)
    verts = np.asarray(model_vertices_camera(model, result))
    rgb, mask = shaded_render(verts, model.triangles, result.camera, (h, w))
    over = composite(image, rgb, mask, alpha=0.75)
    radius = max(1, round(max(h, w) / 400))
    if observed is not None:
        over = draw_points(over, observed, (0, 255, 0), radius + 1)
    over = draw_points(over, result.landmarks2d, (255, 0, 0), radius)
    iio.imwrite(out / "overlay.png", over)
    write_obj(out / "mesh.obj", Mesh(vertices=verts.astype(np.float32),
                                     triangles=np.asarray(model.triangles)))
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out / "result.json")
    return payload


def photometric_extra(model, result, image_size: tuple[int, int], free_albedo: bool = False
                      ) -> dict[str, Any]:
    """The ``result.json`` keys a photometric fit adds: ``albedo``, ``sh``,
    ``photometric_error`` at the top level and the whole photometric fit under
    ``photometric`` (``jaxface.fit.photometric_result_to_json``; ``free_albedo``: the fit
    ended with the free per-vertex albedo stage)."""
    from jaxface.fit import photometric_result_to_json

    kind = None
    if free_albedo:
        kind = ("model" if model.albedo_basis is not None else "harmonics") + "+free"
    ph = photometric_result_to_json(model, result, image_size, albedo_kind=kind)
    return {"albedo": ph["albedo"], "sh": ph["sh"], "photometric_error": ph["photometric_error"],
            "photometric": ph}


def write_photometric_png(out_dir: str | os.PathLike, image: np.ndarray, model, result,
                          name: str = "photometric.png") -> Path:
    """Render the photometric fit (fitted region, albedo and SH light) over the photo."""
    import imageio.v3 as iio

    from jaxface.fit.photometric import face_submodel
    from jaxface.viz import composite, shaded_render

    sub, ids = face_submodel(model)
    h, w = image.shape[:2]
    from jaxface.fit import model_vertices_camera

    verts = np.asarray(model_vertices_camera(model, result))[ids]
    rgb, mask = shaded_render(verts, sub.triangles, result.camera, (h, w), sh=result.sh,
                              albedo=np.asarray(result.albedo)[ids])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (name + ".tmp.png")
    iio.imwrite(tmp, composite(image, np.clip(rgb, 0.0, 1.0), mask, alpha=1.0))
    os.replace(tmp, out / name)
    return out / name
