"""Every expert dispatch backend against a per-token loop: float32 and bfloat16, biases and the
clamped activation, empty experts, one expert taking every token, chunks that do not divide T*k.

Backends run under ``jax.jit`` (one compile per backend, options and shapes; run eagerly, grouped's
loops were traced again at every call), as they run inside the model's jitted forward."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models import experts
from tests.helpers.dispatch_problems import problem, stacked_problem

BACKENDS = experts.available_backends()
# grouped with small chunks: groups run as several full chunks of one expert, then the binary tail
# (4, 2) and a last chunk past the group's end; T*k (111) is no multiple of any chunk
CHUNKED = [("grouped", {"max_chunk": 8, "min_chunk": 2}), ("grouped", {"max_chunk": 4, "min_chunk": 4}),
           ("grouped", {"max_chunk": 16, "min_chunk": 1})]
FAST = "dense"  # the backend kept in the fast lane (-m "not slow"): the cheapest compile; auto's grouped below


def cases(chunked=True):
    return [pytest.param(b, opts, marks=() if b == FAST else pytest.mark.slow)
            for b, opts in [(b, {}) for b in BACKENDS] + (CHUNKED if chunked else [])]


CASES = cases()
# Tests whose property (k=1, bf16, biases, the clamp, absent ids, a layer of a stack, one full group) takes no
# branch of grouped's chunk loop that test_matches_per_token_loop (groups of several full chunks,
# binary tail, overhang into padding), test_decode_sized_batches and the overhang test do not take:
# every backend at its default options, without the three chunked variants.
BASE = cases(chunked=False)


# one object, so that it is one static argument of the jitted dispatch below
CLAMPED = functools.partial(experts.clamped_swiglu, limit=0.6, alpha=1.702)


@functools.partial(jax.jit, static_argnames=("backend", "opts", "act"))
def _run(backend, opts, x, idx, w, p, act):
    if opts:
        return experts.BACKENDS[backend](x, idx, w.astype(x.dtype), p, act, **dict(opts))
    return experts.dispatch(x, idx, w, p, backend, act)


def run(backend, opts, x, idx, w, p, act=experts.swiglu):
    return _run(backend, tuple(sorted(opts.items())), x, idx, w, p, act)


def loop(x, idx, w, p, act):
    """The definition, one token and one choice at a time, in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    p = {n: np.asarray(v, np.float64) for n, v in p.items()}
    y = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            e = idx[t, j]
            g = x[t] @ p["gate"][e] + (p["gate_bias"][e] if "gate_bias" in p else 0)
            u = x[t] @ p["up"][e] + (p["up_bias"][e] if "up_bias" in p else 0)
            h = np.asarray(act(g, u), np.float64)
            y[t] += w[t, j] * (h @ p["down"][e] + (p["down_bias"][e] if "down_bias" in p else 0))
    return y


def np_swiglu(g, u):
    return g / (1 + np.exp(-g)) * u


def np_clamped(g, u, limit=0.6, alpha=1.702):
    g = np.minimum(g, limit)
    return (np.clip(u, -limit, limit) + 1) * g / (1 + np.exp(-alpha * g))


def check(backend, opts, prob, act=experts.swiglu, np_act=np_swiglu, dtype=jnp.float32):
    x, idx, w, p = prob
    cast = lambda a: jnp.asarray(a).astype(dtype)  # noqa: E731
    y = run(backend, opts, cast(x), idx, jnp.asarray(w), {n: cast(v) for n, v in p.items()}, act)
    assert y.dtype == dtype and y.shape == x.shape
    rounded = lambda a: np.asarray(cast(a).astype(jnp.float32))  # noqa: E731  the inputs the backend saw
    want = loop(rounded(x), idx, np.asarray(jnp.asarray(w).astype(dtype).astype(jnp.float32)),
                {n: rounded(v) for n, v in p.items()}, np_act)
    got = np.asarray(y.astype(jnp.float32))
    if dtype == jnp.float32:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:  # bf16 intermediates: a few ulp of the largest output
        assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max()


@pytest.mark.parametrize("backend,opts", CASES)
def test_matches_per_token_loop(backend, opts):
    """k=3 of 6 experts (T*k = 111), float32: every backend and chunking."""
    check(backend, opts, problem(37, 3, 6, seed=3))


# k=1 and bfloat16 take no branch of grouped's chunk loop that k=3 in float32 does not (k only sets
# T*k and the token of each sorted row; bf16 only the dtype of each chunk's matmuls)
@pytest.mark.parametrize("backend,opts", BASE)
@pytest.mark.parametrize("k,dtype", [(1, jnp.float32), (3, jnp.bfloat16)], ids=["k1", "k3-bf16"])
def test_matches_per_token_loop_k1_and_bf16(backend, opts, dtype, k):
    check(backend, opts, problem(37, k, 6, seed=k), dtype=dtype)


@pytest.mark.parametrize("backend,opts", BASE)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_biases_and_clamped_swiglu(backend, opts, dtype):
    prob = problem(29, 3, 6, seed=4, biases=True)
    x, _, _, p = prob
    assert (np.abs(np.einsum("th,ehf->tef", x, p["gate"])) > 0.6).mean() > 0.2  # the clamp bites
    check(backend, opts, prob, CLAMPED, np_clamped, dtype)


@pytest.mark.parametrize("backend,opts", BASE)
def test_one_expert_takes_every_token(backend, opts):
    T = 45
    idx = np.stack([np.full(T, 2), np.arange(T) % 2 * 3], 1)  # expert 2 everywhere; 1, 4, 5 empty
    check(backend, opts, problem(T, 2, 6, seed=7, idx=idx, biases=True))
    check(backend, opts, problem(T, 1, 6, seed=8, idx=np.full((T, 1), 5)))  # one group, the last expert


@pytest.mark.parametrize("backend,opts", CASES)
@pytest.mark.parametrize("T", [1, 3])
def test_decode_sized_batches(backend, opts, T):
    check(backend, opts, problem(T, 2, 16, seed=T))


@pytest.mark.parametrize("backend,opts", BASE)
def test_absent_expert_id_adds_nothing(backend, opts):
    """Expert parallelism passes another shard's assignments as id E with weight 0."""
    x, idx, w, p = problem(23, 3, 6, seed=11, biases=True)
    gone = np.random.default_rng(0).uniform(size=idx.shape) < 0.4
    y = run(backend, opts, jnp.asarray(x), np.where(gone, 6, idx), jnp.asarray(np.where(gone, 0, w)), p)
    want = loop(x, np.where(gone, 0, idx), np.where(gone, 0, w), p, np_swiglu)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,opts", [c for c in CASES if c.values[0] == "grouped"])
def test_overhang_into_the_next_group_leaks_nothing(backend, opts):
    """grouped's last chunk of expert 1 runs past its group into expert 2's rows; there expert 1
    overflows to inf (huge tokens), which must not reach the output (inf * 0 would be NaN). (dense
    runs every expert on every token, so it has no such guarantee.)"""
    x, idx, w, p = problem(13, 1, 4, seed=6)
    idx[:, 0] = np.where(np.arange(13) < 5, 1, 2)  # 5 rows for expert 1, then 8 for expert 2
    x[5:] *= 1e30
    p["gate"][2] = p["up"][2] = 0  # expert 2 maps the huge tokens to exactly 0
    y = np.asarray(run(backend, opts, jnp.asarray(x), idx, jnp.asarray(w), p))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[:5], loop(x[:5], idx[:5], w[:5], p, np_swiglu), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y[5:], 0)


@pytest.mark.parametrize("backend,opts", BASE)
def test_stacked_layers_run_the_named_layer(backend, opts):
    """``layer=`` (traced, as in a scan) picks that layer's experts out of the stack."""
    x, idx, w, layers, stacked = stacked_problem()
    fn = functools.partial(experts.BACKENDS[backend], act=experts.swiglu, **opts) if opts else \
        functools.partial(experts.dispatch, backend=backend)
    run_layer = jax.jit(lambda layer: fn(jnp.asarray(x), jnp.asarray(idx), jnp.asarray(w), stacked, layer=layer))
    for layer, p in enumerate(layers):
        np.testing.assert_allclose(np.asarray(run_layer(layer)), loop(x, idx, w, p, np_swiglu), rtol=1e-5, atol=1e-5)


EXPERT_PARALLEL_STACKED = """
import jax, jax.numpy as jnp, numpy as np
from tests.helpers.dispatch_problems import stacked_problem
from moe_jax import sharding as shd
from moe_jax.models import experts
x, idx, w, layers, stacked = stacked_problem()
mesh = shd.make_mesh({"data": 1, "model": 4})
with jax.set_mesh(mesh):
    for backend in ("grouped", "dense"):
        y = jax.jit(lambda l: experts.dispatch(jnp.asarray(x), jnp.asarray(idx), jnp.asarray(w), stacked, backend,
                                               layer=l))(1)
        np.save(f"{OUT}/{backend}.npy", np.asarray(y))
"""


@pytest.mark.slow
def test_stacked_layers_expert_parallel(tmp_path):
    """On 4 devices splitting the experts, ``layer=`` runs each device's experts of that layer."""
    from tests.helpers.simulated_devices import run_on_devices
    run_on_devices(["-c", f"OUT = {str(tmp_path)!r}\n"
                    + EXPERT_PARALLEL_STACKED], 4)
    x, idx, w, layers, _ = stacked_problem()
    for backend in ("grouped", "dense"):
        np.testing.assert_allclose(np.load(tmp_path / f"{backend}.npy"), loop(x, idx, w, layers[1], np_swiglu),
                                   rtol=1e-5, atol=1e-5, err_msg=backend)


@pytest.mark.slow
@pytest.mark.parametrize("max_chunk,min_chunk", [(8, 2), (128, 8), (4, 4)])
def test_grouped_rows_counted_by_its_loops(max_chunk, min_chunk):
    """The rows grouped computes, counted inside its chunk loops, are each group rounded up to
    min_chunk (so at most T*k + min(E, T*k) * (min_chunk - 1)), and absent ids cost nothing."""
    x, idx, w, p = problem(61, 3, 6, seed=5)
    idx[:20, 0] = 6  # 20 assignments to an absent expert (another shard's)
    w[:20, 0] = 0
    _, rows = jax.jit(functools.partial(experts.grouped_expert_rows, act=experts.swiglu, max_chunk=max_chunk,
                                        min_chunk=min_chunk))(jnp.asarray(x), jnp.asarray(idx), jnp.asarray(w), p)
    sizes = np.bincount(idx.reshape(-1), minlength=7)[:6]
    assert int(rows) == int(experts.grouped_rows(jnp.asarray(sizes), min_chunk)) == \
        sum(-(-n // min_chunk) * min_chunk for n in sizes)
    assert int(rows) <= sizes.sum() + 6 * (min_chunk - 1)


def test_chunk_sizes():
    assert experts.chunk_sizes(128, 8) == (128, 64, 32, 16, 8)
    assert experts.chunk_sizes(4, 4) == (4,)
    with pytest.raises(ValueError, match="power of two"):
        experts.chunk_sizes(24, 8)


def test_auto_picks_a_working_backend_on_cpu():
    assert jax.default_backend() == "cpu"
    assert experts.resolve("auto") == "grouped"
    check("auto", {}, problem(37, 3, 6, seed=9))


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="tokamagic"):
        experts.dispatch(*problem(2, 1, 2, seed=0, idx=np.zeros((2, 1))), "tokamagic")


def test_tokamax_missing_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokamax", None)  # as on a machine without the gpu/tpu extra
    assert not experts.tokamax_available() and "tokamax" not in experts.available_backends()
    assert experts._platform_choice.__wrapped__("gpu") == "grouped"  # auto never picks one that cannot import
    assert experts.resolve("auto") == "grouped"
