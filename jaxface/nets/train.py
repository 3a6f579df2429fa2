"""One training loop for the three regimes of survey §5.1.

    regime "generate": Generate & Render batches made in JAX each step (supervised on the known
                       parameters, vertices and landmarks);
    regime "fit":      crops of real photos with targets from ``jaxface fit`` results;
    regime "self":     crops of real photos with 2D landmarks only: the loss goes through the
                       renderer (landmark reprojection + photometric + coefficient priors).

The step is one jit-compiled function ``(state, batch) -> (state, metrics)``; the state is a
pytree ``{"params", "opt_state", "step"}`` (params: the encoder's weights as a pure dict), so it
checkpoints with orbax as is. Data parallelism is ``jax.sharding``: the batch is split over a
one-axis device mesh ("data"), the state is replicated, and XLA inserts the gradient all-reduce;
on one device this is a no-op. Batch ``k`` is a function of ``fold_in(key(seed), k)`` only, so a
run killed and resumed from its newest checkpoint continues bit-identically (tested).

Outputs in the run directory: ``config.json``, ``checkpoints/N`` (orbax), ``metrics.jsonl`` (one
line per logged step: ``step``, ``loss`` and each term, ``learning_rate``, ``grad_norm``,
``images_per_s``, ``elapsed_s``) and, at the end, ``encoder.npz`` (:func:`export_weights`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxface.nets import checkpoint as ckpt
from jaxface.nets.data import BLOCKS, Batch, ImageSet, dataset_batch, synthetic_batch
from jaxface.nets.decoder import (
    FaceDecoder,
    from_vector,
    make_decoder,
    prediction_landmarks,
    raw_to_vector,
    render_prediction,
    sample_points,
    to_vector,
)
from jaxface.nets.encoder import Encoder, encoder_config
from jaxface.nets.losses import (
    coefficient_regularizer,
    landmark_loss,
    parameter_loss,
    photometric_loss,
    vertex_distance_weights,
    vertex_loss,
)

Array = jax.Array

__all__ = ["TrainConfig", "TrainResult", "build", "load_config", "loss_terms", "train"]

REGIMES = ("generate", "fit", "self")
WEIGHTINGS = ("plain", "weighted", "vertex")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (``jaxface train --config`` reads it from TOML).

    Attributes (groups):
      regime: "generate" | "fit" | "self"; data: folder of ``jaxface fit`` outputs ("fit") or
        of photos with ``<stem>.pts`` landmarks ("self").
      model: "default" or a model path; image_size: S; widths / hidden: the encoder;
        n_identity: identity modes predicted (None: all).
      batch_size, steps, learning_rate (peak of a warm-up + cosine schedule), warmup_steps,
        weight_decay (AdamW), grad_clip (global norm), seed.
      checkpoint_every, keep_checkpoints, log_every.
      Loss weights: w_parameter (eq 15/16 with ``parameter_weighting`` "plain" | "weighted"
        (diagonal ``block_weights``) | "vertex" (3DDFA's vertex-distance weights on the
        geometric blocks)), w_vertex (mean vertex distance, per mm), w_landmark (per crop
        width), w_photometric, w_regularizer; render_mode of the photometric term.
      Generator ("generate"): identity_scale, expression_scale, albedo_scale, max_angles_deg,
        noise, face_fraction (face width / render width: below the generator's 0.55 so that
        the landmark crop stays inside the render), render_size.
    """

    regime: str = "generate"
    data: str | None = None
    model: str = "default"
    image_size: int = 128
    widths: tuple[int, ...] = (16, 24, 48, 96, 192)
    hidden: int = 256
    n_identity: int | None = None
    batch_size: int = 16
    steps: int = 1000
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    parameter_weighting: str = "vertex"
    block_weights: tuple[float, ...] = (1.0, 1.0, 4.0, 4.0, 0.5, 0.25)
    w_parameter: float = 1.0
    w_vertex: float = 0.02
    w_landmark: float = 4.0
    w_photometric: float = 0.0
    w_regularizer: float = 0.0
    render_mode: str = "hard"
    identity_scale: float = 1.0
    expression_scale: float = 0.6
    albedo_scale: float = 0.5
    max_angles_deg: tuple[float, float, float] = (15.0, 50.0, 10.0)
    noise: float = 0.01
    face_fraction: float = 0.45
    render_size: int | None = None

    def __post_init__(self) -> None:
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {self.regime!r}")
        if self.regime != "generate" and not self.data:
            raise ValueError(f"regime {self.regime!r} needs 'data' (a folder)")
        if self.parameter_weighting not in WEIGHTINGS:
            raise ValueError(f"parameter_weighting must be one of {WEIGHTINGS}, "
                             f"got {self.parameter_weighting!r}")
        if len(self.block_weights) != len(BLOCKS):
            raise ValueError(f"block_weights needs {len(BLOCKS)} entries {BLOCKS}")
        if self.batch_size < 1 or self.steps < 1:
            raise ValueError("batch_size and steps must be positive")
        if self.render_mode not in ("hard", "antialias", "soft"):
            raise ValueError(f"render_mode must be hard|antialias|soft, got {self.render_mode!r}")

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a TOML training config (top-level keys = :class:`TrainConfig` fields); a relative
    ``data`` path is taken relative to the config file."""
    path = Path(path)
    d = tomllib.loads(path.read_text())
    d.update({k: v for k, v in overrides.items() if v is not None})
    if d.get("data") and not Path(d["data"]).is_absolute() and not Path(d["data"]).exists():
        d["data"] = str((path.parent / d["data"]).resolve())
    return TrainConfig.from_dict(d)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns: the trained encoder, its decoder, the final state pytree and
    the logged metrics of this call."""

    encoder: Encoder
    decoder: FaceDecoder
    state: Any
    metrics: list[dict[str, float]]
    run_dir: Path | None


# ----------------------------------------------------------------------------- losses


def _block_vector(dec: FaceDecoder, per_block: Any) -> Array:
    """(6,) per-block values -> (P,) per-parameter values."""
    parts = [jnp.full((sl.stop - sl.start,), per_block[i])
             for i, sl in enumerate(dec.blocks.values())]
    return jnp.concatenate(parts)


def loss_terms(cfg: TrainConfig, dec: FaceDecoder, raw: Array, batch: Batch) -> dict[str, Array]:
    """The weighted loss terms of ONE sample (``vmap`` over the batch); zero-weight terms are
    not computed. ``raw``: (P,) encoder output; ``batch``: one sample of a Batch."""
    vec = raw_to_vector(dec, raw)
    pred = from_vector(dec, vec, batch.camera)
    mask = batch.target_mask
    terms: dict[str, Array] = {}
    if cfg.w_parameter:
        target = to_vector(dec, batch.target)
        m = _block_vector(dec, mask)
        w = m * _block_vector(dec, jnp.asarray(cfg.block_weights, jnp.float32)) if (
            cfg.parameter_weighting != "plain") else m
        if cfg.parameter_weighting == "vertex":
            geo = _block_vector(dec, jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32)) * m
            vw = vertex_distance_weights(
                lambda v: sample_points(dec, from_vector(dec, v, batch.camera)), vec, target,
                geo)
            w = jnp.where(geo > 0, vw * jnp.sum(geo), w)
        terms["parameter"] = cfg.w_parameter * parameter_loss(vec, target, w) / dec.size
    if cfg.w_vertex:
        has = mask[0] * mask[2] * mask[3]  # identity and pose known
        terms["vertex"] = cfg.w_vertex * has * vertex_loss(sample_points(dec, pred),
                                                           sample_points(dec, batch.target))
    if cfg.w_landmark:
        terms["landmark"] = cfg.w_landmark * landmark_loss(
            prediction_landmarks(dec, pred), batch.landmarks2d, scale=float(dec.image_size))
    if cfg.w_photometric:
        out = render_prediction(dec, pred, mode=cfg.render_mode)
        terms["photometric"] = cfg.w_photometric * photometric_loss(out.rgb, batch.image,
                                                                    out.mask)
    if cfg.w_regularizer:
        b = dec.blocks
        terms["regularizer"] = cfg.w_regularizer * (
            coefficient_regularizer(vec[b["identity"]], vec[b["albedo"]])
            + jnp.mean(jnp.abs(vec[b["expression"]])))
    return terms


# ----------------------------------------------------------------------------- set-up


def build(cfg: TrainConfig, model: Any = None) -> tuple[Encoder, FaceDecoder, dict[str, Any]]:
    """The decoder, a freshly initialised encoder (from ``cfg.seed``) and the run metadata."""
    if model is None:
        from jaxface.models import load_model

        model = load_model(cfg.model)
    dec = make_decoder(model, cfg.image_size, n_identity=cfg.n_identity)
    ecfg = encoder_config(dec, widths=tuple(cfg.widths), hidden=cfg.hidden)
    enc = Encoder(ecfg, rngs=nnx.Rngs(cfg.seed))
    meta = {"encoder": ecfg.to_json(),
            "decoder": {"model": cfg.model, "model_name": model.name,
                        "image_size": cfg.image_size, "n_identity": dec.n_identity},
            "train": cfg.to_json()}
    return enc, dec, meta


def _schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then cosine decay to 2 % of it at ``steps``."""
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(1, min(cfg.warmup_steps, cfg.steps - 1)), cfg.steps,
        end_value=cfg.learning_rate * 0.02)


def _optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(_schedule(cfg), weight_decay=cfg.weight_decay))


def _data_fn(cfg: TrainConfig, dec: FaceDecoder, dataset: ImageSet | None):
    gen = {"identity_scale": cfg.identity_scale, "expression_scale": cfg.expression_scale,
           "albedo_scale": cfg.albedo_scale, "max_angles_deg": tuple(cfg.max_angles_deg),
           "noise": cfg.noise, "face_fraction": cfg.face_fraction}
    if cfg.regime == "generate":
        # the generator reads regions and albedo harmonics on the host: dec is a constant here
        return jax.jit(lambda k: synthetic_batch(dec, k, cfg.batch_size,
                                                 render_size=cfg.render_size, **gen))
    f = jax.jit(lambda ds, k: dataset_batch(ds, k, cfg.batch_size))
    return lambda key: f(dataset, key)


def _load_dataset(cfg: TrainConfig, dec: FaceDecoder) -> ImageSet | None:
    from jaxface.nets.data import load_fit_dataset, load_landmark_dataset

    if cfg.regime == "generate":
        return None
    if cfg.regime == "fit":
        return load_fit_dataset(dec, cfg.data)
    folder = Path(cfg.data)
    pts = sorted(folder.glob("*.pts"))
    pairs = []
    for p in pts:
        im = [q for q in folder.glob(p.stem + ".*") if q.suffix.lower() in (
            ".jpg", ".jpeg", ".png", ".bmp")]
        if im:
            pairs.append((im[0], p))
    if not pairs:
        raise FileNotFoundError(f"no <stem>.pts with a matching image in {folder}")
    return load_landmark_dataset(dec, [a for a, _ in pairs], [b for _, b in pairs])


def make_step(cfg: TrainConfig, graphdef: Any, opt: optax.GradientTransformation):
    """The jit-compiled training step ``(state, batch, dec) -> (state, metrics)``."""

    def loss_fn(params: Any, batch: Batch, dec: FaceDecoder) -> tuple[Array, dict]:
        raw = nnx.merge(graphdef, params)(batch.image)
        terms = jax.vmap(lambda r, b: loss_terms(cfg, dec, r, b))(raw, batch)
        terms = {k: jnp.mean(v) for k, v in terms.items()}
        return sum(terms.values()), terms

    @jax.jit
    def step(state: dict, batch: Batch, dec: FaceDecoder) -> tuple[dict, dict]:
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch, dec)
        updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **terms}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return step


# ----------------------------------------------------------------------------- the loop


class _Interrupted(Exception):
    """Raised by the test hook ``_stop_after``: the run ends as if killed."""


def train(cfg: TrainConfig, run_dir: str | Path | None = None, *, resume: bool = True,
          progress: bool = True, model: Any = None, _stop_after: int | None = None
          ) -> TrainResult:
    """Train an encoder with ``cfg``; checkpoints and logs go to ``run_dir`` (None: nowhere).

    With ``resume`` and a checkpoint in ``run_dir``, training continues from the newest one:
    same weights, optimiser state, step and data stream, so the result equals an
    uninterrupted run's. ``run_dir`` must then hold the same configuration.

    Returns:
      TrainResult (the encoder holds the final weights).
    """
    enc, dec, meta = build(cfg, model)
    graphdef, params = nnx.split(enc)
    params = nnx.to_pure_dict(params)
    opt = _optimizer(cfg)
    state = {"params": params, "opt_state": opt.init(params), "step": jnp.int32(0)}

    devices = np.asarray(jax.devices())
    if cfg.batch_size % devices.size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the "
                         f"{devices.size} devices")
    mesh = jax.sharding.Mesh(devices, ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    state = jax.device_put(state, replicated)

    mngr, log_path, start = None, None, 0
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = run_dir / "config.json"
        if cfg_path.exists() and resume:
            old = json.loads(cfg_path.read_text())
            if old.get("train") != meta["train"]:
                raise ValueError(f"{run_dir} holds a run with another configuration; use a new "
                                 f"directory or resume=False")
        cfg_path.write_text(json.dumps(meta, indent=1))
        if not resume and (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir / "checkpoints")  # starting over: old steps would clash
        mngr = ckpt.checkpoint_manager(run_dir, cfg.keep_checkpoints)
        log_path = run_dir / "metrics.jsonl"
        last = mngr.latest_step() if resume else None
        if last is not None:
            state = ckpt.restore_state(mngr, last, state)
            start = int(state["step"])
        _truncate_log(log_path, start)

    dataset = _load_dataset(cfg, dec)
    next_batch = _data_fn(cfg, dec, dataset)
    step_fn = make_step(cfg, graphdef, opt)
    base_key = jax.random.key(cfg.seed)
    sched = _schedule(cfg)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train[{cfg.regime}]", unit="step")
    logged: list[dict[str, float]] = []
    t0 = time.perf_counter()
    t_last, n_last = t0, start
    try:
        for k in range(start, cfg.steps):
            batch = jax.device_put(next_batch(jax.random.fold_in(base_key, k)), sharded)
            state, metrics = step_fn(state, batch, dec)
            done = k + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                now = time.perf_counter()
                row = {"step": done, **{n: float(v) for n, v in metrics.items()},
                       "learning_rate": float(sched(k)),
                       "images_per_s": cfg.batch_size * (done - n_last) / max(now - t_last,
                                                                                1e-9),
                       "elapsed_s": now - t0}
                t_last, n_last = now, done
                logged.append(row)
                if log_path is not None:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
            if mngr is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                ckpt.save_state(mngr, done, state)
            if bar is not None:
                bar.update(1)
            if _stop_after is not None and done >= _stop_after:
                raise _Interrupted(done)
    finally:
        if bar is not None:
            bar.close()
        if mngr is not None:
            mngr.close()

    enc = nnx.merge(graphdef, state["params"])
    if run_dir is not None:
        ckpt.export_weights(enc, Path(run_dir) / "encoder.npz", meta)
    return TrainResult(encoder=enc, decoder=dec, state=state, metrics=logged,
                       run_dir=None if run_dir is None else Path(run_dir))


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))
