"""Reading traced programs in tests."""

from __future__ import annotations

from typing import Any

import jax
from jax.extend import core as jcore


def dot_precisions(fn: Any, *args: Any) -> list:
    """The ``precision`` parameter of every dot_general in the jaxpr of ``fn(*args)``, nested
    jaxprs (jit, loops, conditionals, custom rules) included."""
    found: list = []

    def walk(jaxpr: jcore.Jaxpr) -> None:
        for e in jaxpr.eqns:
            if e.primitive.name == "dot_general":
                found.append(e.params.get("precision"))
            for v in e.params.values():
                for sub in v if isinstance(v, (list, tuple)) else [v]:
                    if isinstance(sub, jcore.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jcore.Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
