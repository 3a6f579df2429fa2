"""Exactness of the hard rasteriser on an accelerator: the default device against the CPU.

Rasterises (+ interpolates, forward and backward) the ICT face region and the full ICT mesh at
224², 512² and 1024², orthographic and with perspective ``w``, on the default device and on the
CPU in one process, and compares triangle ids (exact), barycentrics and gradients; at 224² the
ids are also compared with the NumPy reference. Writes JSON.

    python benchmarks/check_accelerator.py --out check_accelerator.json

Needs ``$JAXFACE_DATA/ict-facekit/ict_face_model_light.npz``. On a CPU-only machine both sides
are the CPU (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import load_meshes  # noqa: E402

from jaxface.render import interpolate, rasterize  # noqa: E402
from jaxface.render.reference import fit_to_image, rasterize_reference  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON output path")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512, 1024])
    args = ap.parse_args(argv)
    device, cpu = jax.devices()[0], jax.devices("cpu")[0]
    rows = []
    for mesh, (v, f) in load_meshes().items():
        colors = np.random.default_rng(0).uniform(size=(v.shape[0], 3)).astype(np.float32)
        for s in args.sizes:
            size = (s, s)
            sv = (fit_to_image(v, size)
                  + np.random.default_rng(1).normal(0, 0.3, v.shape)).astype(np.float32)
            for perspective in (False, True):
                w = (np.random.default_rng(2).uniform(1, 2, v.shape[0]).astype(np.float32)
                     if perspective else None)

                def loss(x, c, w=w, size=size, f=f):
                    fr = rasterize(x, f, size, None if w is None else jnp.asarray(w))
                    img = interpolate(c, fr, f)
                    depth = jnp.where(jnp.isfinite(fr.depth), fr.depth, 0.0)
                    return jnp.sum(img * img) + 1e-3 * jnp.sum(depth), fr

                out = {}
                for name, dev in (("device", device), ("cpu", cpu)):
                    with jax.default_device(dev):
                        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
                        (value, fr), grads = fn(jnp.asarray(sv), jnp.asarray(colors))
                        out[name] = (float(value), np.asarray(fr.triangle_id),
                                     np.asarray(fr.barycentric), [np.asarray(g) for g in grads])
                ids_d, ids_c = out["device"][1], out["cpu"][1]
                row = {
                    "mesh": mesh, "triangles": int(f.shape[0]), "size": s,
                    "perspective": perspective, "covered": int((ids_c >= 0).sum()),
                    "id_mismatch_device_vs_cpu": int((ids_d != ids_c).sum()),
                    "barycentric_max_abs_diff": float(np.abs(out["device"][2]
                                                             - out["cpu"][2]).max()),
                    "loss_rel_diff": abs(out["device"][0] - out["cpu"][0]) / abs(out["cpu"][0]),
                    "grad_max_rel_diff": [float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30))
                                          for a, b in zip(out["device"][3], out["cpu"][3],
                                                          strict=True)],
                }
                if s == 224 and not perspective:
                    ref, _, _ = rasterize_reference(sv, f, size)
                    row["id_mismatch_device_vs_numpy_reference"] = int((ids_d != ref).sum())
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"check": "accelerator_exactness", "device": str(device),
              "jax_version": jax.__version__, "results": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
