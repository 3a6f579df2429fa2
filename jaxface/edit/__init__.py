"""Texture extraction and face editing (survey §6): UV texture from a photo, frontalisation,
relighting and expression transfer, each composited back into the photo.

A "fit" here is anything with ``identity``, ``expression``, ``rotation``, ``translation`` and
``camera`` attributes: a :class:`jaxface.fit.FitResult`, or :class:`SavedFit` read from a
``result.json`` by :func:`load_fit`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxface._pytree import pytree_dataclass
from jaxface.camera import PerspectiveCamera
from jaxface.edit.frontalize import EditOutput, frontal_pose, frontalize
from jaxface.edit.relight import estimate_sh, relight, relight_vertices
from jaxface.edit.texture import (
    Texture,
    UVLayout,
    extract_texture,
    extract_texture_from_vertices,
    fit_vertices_camera,
    mirror_vertices,
    render_textured,
    uv_layout,
)
from jaxface.edit.transfer import expression_from_names, transfer_expression, transfer_vertices
from jaxface.errors import JaxfaceError

__all__ = [
    "EditOutput",
    "SavedFit",
    "Texture",
    "UVLayout",
    "demo_edits",
    "estimate_sh",
    "expression_from_names",
    "extract_texture",
    "extract_texture_from_vertices",
    "fit_vertices_camera",
    "frontal_pose",
    "frontalize",
    "load_fit",
    "mirror_vertices",
    "relight",
    "relight_vertices",
    "render_textured",
    "side_light",
    "transfer_expression",
    "transfer_vertices",
    "uv_layout",
    "write_edit_outputs",
    "write_png",
]


@pytree_dataclass
class SavedFit:
    """A fit read back from ``result.json`` (the fields the editing functions use).

    Attributes:
      identity: (Ks,); expression: (Ke,) (empty for models without expressions);
      rotation: (3, 3) model -> camera; translation: (3,) mm; camera: PerspectiveCamera;
      sh: (9, 3) photometric light or None; albedo: (3,) mean colour or (V, 3) per-vertex
        albedo of a photometric fit, or None.
    """

    identity: Any
    expression: Any
    rotation: Any
    translation: Any
    camera: Any
    sh: Any = None
    albedo: Any = None


def _albedo_from_json(a: Any) -> np.ndarray | None:
    """A photometric result's ``albedo``: ``{"mean_rgb": [r, g, b], ...}`` -> (3,) colour; a
    (V, 3) list -> per-vertex colours; anything else (bare coefficients) -> None."""
    if isinstance(a, dict):
        a = a.get("mean_rgb")
        return None if a is None else np.asarray(a, np.float32).reshape(3)
    if a is None:
        return None
    arr = np.asarray(a, np.float32)
    return arr if arr.ndim == 2 and arr.shape[1] == 3 else None


def load_fit(path: str | os.PathLike) -> tuple[SavedFit, dict[str, Any]]:
    """Read a ``jaxface fit`` / ``jaxface demo`` ``result.json`` (a file or its folder).

    Returns:
      (SavedFit, the whole JSON payload).

    Raises:
      FileNotFoundError: no result.json; JaxfaceError: a key is missing or malformed.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    if not p.is_file():
        raise FileNotFoundError(f"fit result {str(p)!r} not found")
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise JaxfaceError(f"{p}: not a readable JSON file ({e})") from None
    try:
        cam = d["camera"]
        fit = SavedFit(
            identity=np.asarray(d["identity"], np.float32).reshape(-1),
            expression=np.asarray(d.get("expression") or [], np.float32).reshape(-1),
            rotation=np.asarray(d["rotation"], np.float32).reshape(3, 3),
            translation=np.asarray(d["translation"], np.float32).reshape(3),
            camera=PerspectiveCamera(fx=np.float32(cam["fx"]), fy=np.float32(cam["fy"]),
                                     cx=np.float32(cam["cx"]), cy=np.float32(cam["cy"])),
            sh=None if d.get("sh") is None else np.asarray(d["sh"], np.float32).reshape(9, 3),
            albedo=_albedo_from_json(d.get("albedo")),
        )
        if "image_size" in d:
            hw = [int(s) for s in d["image_size"]]
            if len(hw) != 2:
                raise ValueError("image_size must be [H, W]")
    except (KeyError, TypeError, ValueError) as e:
        raise JaxfaceError(f"{p}: malformed fit result ({type(e).__name__}: {e})") from None
    return fit, d


def write_png(path: Path, image: Any) -> None:
    import imageio.v3 as iio

    from jaxface.viz import to_uint8

    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    iio.imwrite(tmp, to_uint8(np.asarray(image)))
    os.replace(tmp, path)


# texel source -> colour: empty black, observed grey, mirror-filled blue, fallback red
_SOURCE_COLOURS = np.array([[0, 0, 0], [0.8, 0.8, 0.8], [0.2, 0.4, 1.0], [1.0, 0.2, 0.2]])


def write_edit_outputs(out_dir: str | os.PathLike, model: Any, image: Any, fit: Any, *,
                       texture_size: int = 512, sh_new: Any = None,
                       what: tuple[str, ...] = ("texture", "frontal", "relit")) -> dict[str, str]:
    """Compute and write texture / frontal / relit (and textured meshes) into ``out_dir``.

    Files: ``texture.png`` (+ ``texture_visibility.png``), ``textured.obj``/``.mtl``/``.glb``
    (model frame, mm in OBJ and metres in glTF), ``frontal.png``, ``relit.png``. Each is
    written under a temporary name, then renamed.

    Returns:
      {kind: file name} of what was written.
    """
    from jaxface.mesh.gltf import write_gltf, write_textured_obj
    from jaxface.models.morphable import vertices

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    written: dict[str, str] = {}
    tex = extract_texture(model, image, fit, texture_size)
    if "texture" in what:
        write_png(out / "texture.png", tex.texture)
        write_png(out / "texture_visibility.png", _SOURCE_COLOURS[np.asarray(tex.source)])
        ex = fit.expression if model.n_expression else None
        v_model = np.asarray(vertices(model, fit.identity, ex))
        write_textured_obj(out / "textured.obj", v_model, tex.layout, tex.texture)
        write_gltf(out / "textured.glb", v_model, tex.layout.triangles, uv=tex.layout.uv,
                   uv_triangles=tex.layout.uv_triangles, texture=tex.texture)
        written.update(texture="texture.png", obj="textured.obj", glb="textured.glb")
    if "frontal" in what:
        fr = frontalize(model, fit, tex, (h, w), fit_image_size=(h, w))
        write_png(out / "frontal.png", fr.image)
        written["frontal"] = "frontal.png"
    if "relit" in what:
        if sh_new is None:
            sh_new = side_light()
        rl = relight(model, fit, image, sh_new, sh_old=getattr(fit, "sh", None),
                     match_brightness=True)
        write_png(out / "relit.png", rl.image)
        written["relit"] = "relit.png"
    return written


def side_light(side: float = 1.0) -> np.ndarray:
    """(9, 3) SH light for the demo's relighting: ambient 0.6 plus a key light from the
    viewer's right (``side=1``) or left (``side=-1``), slightly above, in the camera frame."""
    from jaxface.render.shading import sh_ambient, sh_directional

    return np.asarray(sh_ambient(0.6) + sh_directional(np.array([0.75 * side, -0.3, -0.6]),
                                                        0.5))


def demo_edits(out_dir: str | os.PathLike, model: Any, image: Any, result: Any,
               texture_size: int = 512) -> dict[str, str]:
    """For ``jaxface demo``: write ``texture.png``, ``textured.obj/.mtl/.glb``, ``frontal.png``
    and ``relit.png`` for a fit (``result``: FitResult or SavedFit) of ``image`` into
    ``out_dir``. Returns {kind: file name}."""
    return write_edit_outputs(out_dir, model, image, result, texture_size=texture_size)
