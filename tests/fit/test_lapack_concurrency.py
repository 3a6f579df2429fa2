"""Batched fits never run two LAPACK calls at once.

jaxlib 0.10.2's CPU LAPACK kernels (Cholesky, eigh, ...) split a batch into tasks on XLA:CPU's
intra-op thread pool and block their worker until the tasks are done: as many batched LAPACK
calls running concurrently as pool threads (2 on a 2-core machine) deadlock the process. The
vmapped ``fit_linear`` hung that way (identity Cholesky next to the expression eigh). These
tests read the compiled program: within every computation, each pair of LAPACK custom calls
(or of instructions whose called computations contain one, e.g. while loops) must be ordered
by a data or control dependency.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxface.fit import fit_landmarks
from jaxface.fit.linear import fit_linear
from jaxface.models import load_default

H, W = 480, 640
_CALLS = re.compile(r"(?:calls|body|condition|to_apply|branch_computations|true_computation|"
                    r"false_computation)=\{?([%\w.\-, ]+)\}?")


def _parse(hlo: str) -> dict[str, dict[str, dict]]:
    """computation -> instruction -> {preds, callees, lapack} from HLO text."""
    comps: dict[str, dict[str, dict]] = {}
    cur = None
    for line in hlo.split("\n"):
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            cur = head.group(1)
            comps[cur] = {}
            continue
        if line.strip() == "}":
            cur = None
            continue
        m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$", line) if cur else None
        if not m:
            continue
        rest = m.group(2)
        operands = rest.split(", metadata=")[0].split("), ")[0]
        preds = set(re.findall(r"%([\w.\-]+)", operands))
        for ctrl in re.findall(r"control-predecessors=\{([^}]*)\}", rest):
            preds |= {c.strip().lstrip("%") for c in ctrl.split(",") if c.strip()}
        callees = [c.strip().lstrip("%") for group in _CALLS.findall(rest)
                   for c in group.split(",") if c.strip()]
        comps[cur][m.group(1)] = dict(preds=preds, callees=callees,
                                      lapack='custom_call_target="lapack_' in rest)
    return comps


def _unordered_lapack_pairs(hlo: str) -> list[tuple[str, str, str]]:
    comps = _parse(hlo)
    memo: dict[str, bool] = {}

    def holds_lapack(comp: str) -> bool:
        if comp not in memo:
            memo[comp] = False
            memo[comp] = any(i["lapack"] or any(holds_lapack(c) for c in i["callees"]
                                                if c in comps)
                             for i in comps.get(comp, {}).values())
        return memo[comp]

    pairs = []
    for name, instrs in comps.items():
        nodes = [n for n, i in instrs.items()
                 if i["lapack"] or any(holds_lapack(c) for c in i["callees"] if c in comps)]
        ancestors: dict[str, set[str]] = {}
        for n in nodes:
            seen, stack = set(), [n]
            while stack:
                for p in instrs[stack.pop()]["preds"]:
                    if p in instrs and p not in seen:
                        seen.add(p)
                        stack.append(p)
            ancestors[n] = seen
        pairs += [(name, a, b) for a, b in itertools.combinations(nodes, 2)
                  if a not in ancestors[b] and b not in ancestors[a]]
    return pairs


def test_checker_finds_concurrent_lapack_calls():
    # two independent batched factorisations: nothing orders them
    def two(a, b):
        return jnp.linalg.cholesky(a), jnp.linalg.eigh(b)[0]

    x = jnp.broadcast_to(jnp.eye(5), (4, 5, 5))
    hlo = jax.jit(two).lower(x, x).compile().as_text()
    assert len(_unordered_lapack_pairs(hlo)) >= 1

    def chained(a, b):
        c = jnp.linalg.cholesky(a)
        return jnp.linalg.eigh(b + c)[0]

    hlo = jax.jit(chained).lower(x, x).compile().as_text()
    assert _unordered_lapack_pairs(hlo) == []


@pytest.fixture(scope="module")
def model():
    return load_default()


def _batch(model, n=3):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.uniform(200, 400, (n, len(model.landmarks["ibug68"]), 2)),
                       jnp.float32)


def test_batched_fit_linear_orders_its_lapack_calls(model):
    fn = jax.jit(jax.vmap(lambda y: fit_linear(model, y, (H, W), n_iterations=2)))
    hlo = fn.lower(_batch(model)).compile().as_text()
    assert "lapack_" in hlo
    assert _unordered_lapack_pairs(hlo) == []


def test_batched_fit_landmarks_orders_its_lapack_calls(model):
    fn = jax.jit(jax.vmap(lambda y: fit_landmarks(model, y, (H, W))))
    hlo = fn.lower(_batch(model)).compile().as_text()
    assert "lapack_" in hlo
    assert _unordered_lapack_pairs(hlo) == []
