"""Checkpoints: orbax training state (resume after a kill) and compact weight exports.

A training run directory holds::

    RUN/config.json      the TrainConfig, the EncoderConfig and the decoder settings
    RUN/checkpoints/N/   orbax checkpoints of {params, opt_state, step} (the newest few)
    RUN/metrics.jsonl    one JSON object per logged step

:func:`export_weights` writes the encoder alone to one ``.npz`` (float16 by default: half the
size, and the encoder's outputs move by ~1e-3 of their range), with the configuration inside.
:func:`load_encoder` reads either form, so ``jaxface predict --checkpoint`` takes a run
directory, one of its step folders, or an exported ``.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxface.errors import JaxfaceError
from jaxface.nets.encoder import Encoder, EncoderConfig

__all__ = ["CheckpointError", "checkpoint_manager", "export_weights", "latest_step",
           "load_encoder", "read_run_config"]


class CheckpointError(JaxfaceError, ValueError):
    """A checkpoint that is missing, incomplete or of another architecture."""


def checkpoint_manager(run_dir: str | Path, keep: int = 2) -> Any:
    """An orbax CheckpointManager on ``run_dir/checkpoints`` (synchronous saves: a kill right
    after ``save`` returns cannot leave a half-written newest checkpoint behind)."""
    import orbax.checkpoint as ocp

    path = Path(run_dir).absolute() / "checkpoints"
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                        create=True)
    return ocp.CheckpointManager(path, options=opts)


def latest_step(run_dir: str | Path) -> int | None:
    """The newest complete checkpoint step in ``run_dir``, or None."""
    if not (Path(run_dir) / "checkpoints").is_dir():
        return None
    mngr = checkpoint_manager(run_dir)
    try:
        return mngr.latest_step()
    finally:
        mngr.close()


def save_state(mngr: Any, step: int, state: Any) -> None:
    import orbax.checkpoint as ocp

    mngr.save(step, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()


def restore_state(mngr: Any, step: int, like: Any) -> Any:
    """Restore the pytree saved at ``step`` into the structure (and shardings) of ``like``."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a training run directory (no config.json)")
    return json.loads(path.read_text())


def _flat(params_pure: Any) -> dict[str, np.ndarray]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params_pure)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        out[key] = np.asarray(leaf)
    return out


def export_weights(encoder: Encoder, path: str | Path, meta: dict[str, Any], *,
                   dtype: Any = np.float16) -> Path:
    """Write ``encoder``'s weights and ``meta`` (must hold ``"encoder"``, an EncoderConfig as
    JSON, and ``"decoder"``, the decoder settings) to one ``.npz``."""
    if "encoder" not in meta or "decoder" not in meta:
        raise ValueError("meta needs 'encoder' and 'decoder' entries")
    params = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
    arrays = {f"w:{k}": v.astype(dtype) for k, v in _flat(params).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, __meta__=np.asarray(json.dumps(meta)), **arrays)
    return path


def _encoder_from_meta(meta: dict[str, Any]) -> Encoder:
    return Encoder(EncoderConfig.from_json(meta["encoder"]), rngs=nnx.Rngs(0))


def _set_params(encoder: Encoder, flat: dict[str, np.ndarray], source: str) -> None:
    state = nnx.state(encoder, nnx.Param)
    pure = nnx.to_pure_dict(state)
    want = _flat(pure)
    if set(want) != set(flat):
        missing = sorted(set(want) - set(flat))[:3]
        extra = sorted(set(flat) - set(want))[:3]
        raise CheckpointError(f"{source}: weights do not match the architecture "
                              f"(missing {missing}, unexpected {extra})")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    new = []
    for p, leaf in leaves:
        key = "/".join(str(getattr(q, "key", getattr(q, "idx", q))) for q in p)
        arr = flat[key]
        if arr.shape != np.shape(leaf):
            raise CheckpointError(f"{source}: weight {key} has shape {arr.shape}, the "
                                  f"architecture needs {np.shape(leaf)}")
        new.append(jnp.asarray(arr, jnp.float32))
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, new))
    nnx.update(encoder, state)


def load_encoder(path: str | Path, step: int | None = None) -> tuple[Encoder, dict[str, Any]]:
    """Load an encoder and its metadata (``{"encoder", "decoder", ...}``).

    Args:
      path: an exported ``.npz``, a training run directory (its newest checkpoint, or ``step``)
        or one of its ``checkpoints/N`` folders.

    Raises:
      CheckpointError: nothing loadable there, or weights of another architecture.
    """
    path = Path(path)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                flat = {k[2:]: z[k] for k in z.files if k.startswith("w:")}
        except (KeyError, ValueError, OSError) as e:
            raise CheckpointError(f"{path}: not a jaxface encoder export ({e})") from e
        enc = _encoder_from_meta(meta)
        _set_params(enc, flat, str(path))
        return enc, meta
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.parent.name == "checkpoints" and path.name.isdigit():
        run, step = path.parent.parent, int(path.name)
    else:
        run = path
    meta = read_run_config(run)
    step = latest_step(run) if step is None else step
    if step is None:
        raise CheckpointError(f"{run} has no complete checkpoint yet")
    enc = _encoder_from_meta(meta)
    mngr = checkpoint_manager(run)
    try:
        import orbax.checkpoint as ocp

        restored = mngr.restore(step, args=ocp.args.StandardRestore())
    finally:
        mngr.close()
    _set_params(enc, _flat(restored["params"]), f"{run} step {step}")
    meta = dict(meta, step=int(step))
    return enc, meta
