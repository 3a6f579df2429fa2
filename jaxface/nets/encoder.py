"""The image encoder (Flax NNX): a small ResNet-style backbone with one linear head per block.

    image (B, S, S, 3) in [0, 1]
      -> stem: 3x3 conv, stride 2
      -> stages: [3x3 conv stride 2 -> residual block (two 3x3 convs)] x (len(widths) - 1)
      -> global average pool -> LayerNorm -> dense (hidden)
      -> heads: identity | expression | rotation | position | light | albedo
         (concatenated: the decoder's raw vector, see :mod:`jaxface.nets.decoder`)

No batch normalisation (nothing to carry between train and eval, nothing batch-dependent at
inference): He-initialised convolutions keep the activation scale through the ReLUs, residual
branches end in a zero-initialised convolution (every block starts as the identity), and one
LayerNorm on the pooled features gives the heads unit-scale inputs from the first step.
Plain (not depthwise) convolutions, because XLA's CPU backend runs dense 3x3 convolutions
several times faster per FLOP than grouped ones (measured: the depthwise variant of this
network was ~3x slower at batch 64 on 2 cores).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

__all__ = ["Encoder", "EncoderConfig", "check_images"]


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of :class:`Encoder`.

    Attributes:
      image_size: S; inputs are S x S x 3 (32 <= S; 120 - 224 is the intended range).
      widths: channels of the stem and of each stage (each stage halves the resolution).
      hidden: width of the dense layer before the heads.
      head_sizes: (name, length) of each output block, in the decoder's order.
    """

    image_size: int = 128
    widths: tuple[int, ...] = (16, 24, 48, 96, 192)
    hidden: int = 256
    head_sizes: tuple[tuple[str, int], ...] = ()

    @property
    def output_size(self) -> int:
        return sum(n for _, n in self.head_sizes)

    def to_json(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "widths": list(self.widths),
                "hidden": self.hidden, "head_sizes": [list(h) for h in self.head_sizes]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EncoderConfig:
        return cls(image_size=int(d["image_size"]), widths=tuple(int(w) for w in d["widths"]),
                   hidden=int(d["hidden"]),
                   head_sizes=tuple((str(n), int(k)) for n, k in d["head_sizes"]))


def check_images(images: Any, image_size: int) -> Array:
    """Validate an encoder input: (B, S, S, 3) (or one (S, S, 3) image) float in [0, 1].

    Raises:
      ValueError: wrong rank, size or channel count, with what was expected.
    """
    x = jnp.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"encoder input must be (B, {image_size}, {image_size}, 3) or "
                         f"({image_size}, {image_size}, 3), got shape {tuple(x.shape)}")
    if x.shape[-1] != 3:
        raise ValueError(f"encoder input must have 3 (RGB) channels, got {x.shape[-1]} "
                         f"(shape {tuple(x.shape)}); convert grey or RGBA images to RGB first")
    if x.shape[1:3] != (image_size, image_size):
        raise ValueError(f"encoder input must be {image_size} x {image_size} pixels, got "
                         f"{x.shape[1]} x {x.shape[2]}; crop and resize with "
                         f"jaxface.nets.crop_to_box first")
    if jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError("encoder input must be float in [0, 1], got an integer array "
                         "(divide uint8 images by 255)")
    return x.astype(jnp.float32)


_HE = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class _Residual(nnx.Module):
    def __init__(self, c: int, rngs: nnx.Rngs):
        self.a = nnx.Conv(c, c, (3, 3), kernel_init=_HE, rngs=rngs)
        self.b = nnx.Conv(c, c, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(x + self.b(jax.nn.relu(self.a(x))))


class Encoder(nnx.Module):
    """Image -> raw parameter vector (see :mod:`jaxface.nets.decoder` for its layout).

    Call with (B, S, S, 3) float images in [0, 1] (or one (S, S, 3) image, which gives (P,)).
    """

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        if config.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {config.image_size}")
        if not config.head_sizes:
            raise ValueError("EncoderConfig.head_sizes is empty (build it with "
                             "jaxface.nets.encoder_config(decoder))")
        self.config = config
        w = config.widths
        self.stem = nnx.Conv(3, w[0], (3, 3), strides=2, kernel_init=_HE, rngs=rngs)
        self.down = nnx.List([nnx.Conv(a, b, (3, 3), strides=2, kernel_init=_HE, rngs=rngs)
                              for a, b in zip(w[:-1], w[1:], strict=True)])
        self.blocks = nnx.List([_Residual(b, rngs) for b in w[1:]])
        self.norm = nnx.LayerNorm(w[-1], rngs=rngs)
        self.hidden = nnx.Linear(w[-1], config.hidden, kernel_init=_HE, rngs=rngs)
        # small initial outputs: the decoder's zero point is a frontal, centred, neutral face
        self.heads = nnx.Dict({
            name: nnx.Linear(config.hidden, n, kernel_init=nnx.initializers.normal(1e-3),
                             rngs=rngs)
            for name, n in config.head_sizes})

    def __call__(self, images: Any) -> Array:
        single = jnp.ndim(images) == 3
        x = check_images(images, self.config.image_size)
        x = (x - 0.5) * 2.0
        x = jax.nn.relu(self.stem(x))
        for down, block in zip(self.down, self.blocks, strict=True):
            x = block(jax.nn.relu(down(x)))
        x = self.norm(jnp.mean(x, axis=(1, 2)))
        x = jax.nn.relu(self.hidden(x))
        out = jnp.concatenate([self.heads[name](x) for name, _ in self.config.head_sizes],
                              axis=-1)
        return out[0] if single else out


def encoder_config(decoder: Any, image_size: int | None = None, **kwargs: Any) -> EncoderConfig:
    """An :class:`EncoderConfig` whose heads match ``decoder``'s raw layout."""
    heads = tuple((name, sl.stop - sl.start) for name, sl in decoder.blocks.items()
                  if sl.stop > sl.start)
    return EncoderConfig(image_size=image_size or decoder.image_size, head_sizes=heads, **kwargs)
