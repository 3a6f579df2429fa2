"""Serialising fit results (the ``result.json`` contract of ``jaxface fit`` and the demo)."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxface.fit.landmarks import FitResult, fitted_landmarks3d
from jaxface.models.morphable import MorphableModel


def _list(x: Any) -> Any:
    return np.asarray(x, np.float64).round(6).tolist()


def result_to_json(model: MorphableModel, result: FitResult, image_size: tuple[int, int],
                   landmark_set: str = "ibug68") -> dict[str, Any]:
    """A JSON-ready dict of one (unbatched) fit.

    Keys: ``landmarks2d`` (L x 2 pixels, the fitted model's landmarks projected into the image,
    in the landmark set's order), ``landmarks3d`` (L x 3, camera frame, mm), ``rotation`` (3 x 3,
    model -> camera), ``translation`` (mm), ``camera`` (fx, fy, cx, cy in pixels),
    ``image_size`` [H, W], ``identity``, ``expression``, ``expression_names``,
    ``landmark_rmse_px``, ``landmark_residuals_px``, ``iterations``, ``converged``, ``model``.
    """
    cam = result.camera
    res = np.asarray(result.residuals, np.float64)
    out = {
        "model": model.name,
        "units": model.units,
        "image_size": [int(image_size[0]), int(image_size[1])],
        "landmark_set": landmark_set,
        "landmarks2d": _list(result.landmarks2d),
        "landmarks3d": _list(fitted_landmarks3d(model, result, landmark_set)),
        "rotation": _list(result.rotation),
        "translation": _list(result.translation),
        "camera": {"fx": float(cam.fx), "fy": float(cam.fy), "cx": float(cam.cx),
                   "cy": float(cam.cy)},
        "identity": _list(result.identity),
        "expression": _list(result.expression),
        "expression_kind": model.expression_kind,
        "expression_names": list(model.expression_names) if model.expression_names else None,
        "landmark_rmse_px": float(np.sqrt(np.nanmean(res ** 2))),
        "landmark_residuals_px": [None if not np.isfinite(r) else round(float(r), 4)
                                  for r in res],
        "iterations": int(result.iterations),
        "converged": bool(result.converged),
    }
    return out
