"""Routing collection: a jitted forward + on-device reduction per batch, host accumulation per language.

One compiled step per batch shape: batches come from ``moe_jax.data.batches`` with a fixed batch
size (the last batch is filled with dummy rows that count nothing) and the sequence length rounded
up to a multiple of ``pad_to_multiple``, so a run compiles at most ``max_length / pad_to_multiple``
shapes. Sequences are batched by length (less padding); results are put back in corpus order.

Only ``[B, L, E]`` summaries leave the device, unless per-token top-k indices are asked for; with
hidden states, ``[B, layers + 1, k]`` projected pooled states and ``[B, layers + 1, 2]`` logit-lens
masses (``hidden_statistics``). Language totals are accumulated on the host in int64 / float64.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from moe_jax.data.tokenize import EncodedTexts, batches
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax import sharding as shd
from moe_jax.models.lens import residual_stream
from moe_jax.routing import hidden_statistics
from moe_jax.routing.statistics import routing_statistics

Step = Callable[..., Mapping[str, Any]]


class HiddenInputs(NamedTuple):
    """What a hidden-state collection step takes besides the batch: ``projection [H, k]`` float32 and
    ``token_sets [2, V]`` (1 on the pivot's tokens, 1 on the language's own tokens)."""

    projection: Any
    token_sets: Any


def make_collect_step(cfg: ModelConfig, mesh: Mesh, *, token_topk: bool = False, backend: str = "auto",
                      forward_fn: Callable | None = None, hidden_states: bool = False,
                      logit_lens: bool = True) -> Step:
    """``step(params, input_ids [B,S], attention_mask [B,S], count_mask [B,S]) -> statistics dict``;
    with ``hidden_states``, ``step(params, ids, mask, count_mask, hidden: HiddenInputs)`` also returns
    ``seq_hidden [B, layers + 1, k]`` float16 and (with ``logit_lens``) ``seq_lens_mass [B, layers + 1, 2]``
    float32 (``hidden.token_sets`` unused without it).

    Jitted and run under ``mesh`` (so a ``model`` axis splitting the experts runs them expert-parallel);
    outputs are replicated over the mesh so that every process can read them.
    ``forward_fn`` defaults to ``moe_jax.models.decoder.forward``.
    """
    forward_fn = forward if forward_fn is None else forward_fn

    def step(params, input_ids, attention_mask, count_mask, hidden=None):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # experts run where they are stored
            out = forward_fn(params, cfg, input_ids, attention_mask=attention_mask, return_router=True,
                             compute_logits=False, backend=backend,
                             **({"return_hidden_states": True} if hidden_states else {}))
        counted = attention_mask.astype(bool) & count_mask.astype(bool)
        stats = routing_statistics(out.router_logits, out.topk_idx, out.topk_weights, counted,
                                   token_topk=token_topk)
        if hidden_states:
            stats["seq_hidden"] = hidden_statistics.pooled_states(out.hidden_states, counted, hidden.projection)
            if logit_lens:
                stats["seq_lens_mass"] = hidden_statistics.lens_mass(params, cfg, residual_stream(out), counted,
                                                                     hidden.token_sets)
        return stats

    return jax.jit(step, out_shardings=shd.replicated(mesh))


# ------------------------------------------------------------------------------------- accumulator

class LanguageAccumulator:
    """Per-sequence rows in corpus order and language totals (int64 / float64)."""

    def __init__(self, num_seqs: int, num_layers: int, num_experts: int, keep_token_topk: bool):
        N, L, E = num_seqs, num_layers, num_experts
        self.hidden: dict[str, np.ndarray] = {}  # seq_hidden / seq_lens_mass rows, when the step returns them
        self.seq_lengths = np.full(N, -1, np.int64)
        self.seq_mean_probs = np.zeros((N, L, E), np.float32)
        self.seq_topk_freq = np.zeros((N, L, E), np.float32)
        self.seq_topk_weight = np.zeros((N, L, E), np.float32)
        self.seq_gate_weight = np.zeros((N, L, E), np.float32)
        self.seq_token_entropy = np.zeros((N, L), np.float32)
        self.topk_counts = np.zeros((L, E), np.int64)
        self.gate_weight_sums = np.zeros((L, E), np.float64)
        self.token_total = 0
        self.token_topk: list[np.ndarray | None] | None = [None] * N if keep_token_topk else None

    def add(self, rows: np.ndarray, out: Mapping[str, np.ndarray], counted: np.ndarray) -> None:
        """Adds one batch: ``rows [B]`` corpus indices (-1 filler), ``counted [B, S]`` host mask."""
        valid = rows >= 0
        r = rows[valid]
        if np.any(self.seq_lengths[r] >= 0):
            raise RuntimeError(f"sequences {r[self.seq_lengths[r] >= 0].tolist()} were collected twice")
        lengths = np.asarray(out["seq_lengths"])
        if not np.array_equal(lengths, counted.sum(1)):
            raise RuntimeError(f"device counted {lengths.tolist()} tokens per row, host {counted.sum(1).tolist()}")
        self.seq_lengths[r] = lengths[valid]
        self.seq_mean_probs[r] = out["seq_mean_probs"][valid]
        self.seq_topk_freq[r] = out["seq_topk_freq"][valid]
        self.seq_topk_weight[r] = out["seq_topk_weight"][valid]
        self.seq_gate_weight[r] = out["seq_gate_weight"][valid]
        self.seq_token_entropy[r] = out["seq_token_entropy"][valid]
        self.topk_counts += np.asarray(out["topk_counts"], np.int64)
        self.gate_weight_sums += np.asarray(out["gate_weight_sums"], np.float64)
        self.token_total += int(out["token_count"])
        for key in ("seq_hidden", "seq_lens_mass"):
            if key in out:
                x = np.asarray(out[key])
                rows_of = self.hidden.setdefault(key, np.zeros((len(self.seq_lengths), *x.shape[1:]), x.dtype))
                rows_of[r] = x[valid]
        if self.token_topk is not None:
            tok = np.asarray(out["token_topk"])  # [B, S, L, k]
            for i in np.flatnonzero(valid):
                self.token_topk[rows[i]] = tok[i][counted[i]]

    def arrays(self) -> dict[str, np.ndarray]:
        """Store arrays (all but ``seq_ids``)."""
        missing = np.flatnonzero(self.seq_lengths < 0)
        if missing.size:
            raise RuntimeError(f"sequences {missing[:10].tolist()} were never collected")
        L = self.topk_counts.shape[0]
        out = {
            "seq_lengths": self.seq_lengths.astype(np.int32),
            "seq_mean_probs": self.seq_mean_probs,
            "seq_topk_freq": self.seq_topk_freq,
            "seq_topk_weight": self.seq_topk_weight,
            "seq_gate_weight": self.seq_gate_weight,
            "seq_token_entropy": self.seq_token_entropy,
            "topk_counts": self.topk_counts,
            "gate_weight_sums": self.gate_weight_sums,
            "token_totals": np.full(L, self.token_total, np.int64),
            **self.hidden,
        }
        if self.token_topk is not None:
            out["token_topk"] = np.concatenate(self.token_topk, axis=0).astype(np.int16)
        return out


# ---------------------------------------------------------------------------------------- language

@dataclasses.dataclass
class LanguageResult:
    arrays: dict[str, np.ndarray]
    sequences: int
    counted_tokens: int
    tokens: int  # real (non-padding) tokens run through the model
    padded_tokens: int  # positions computed, padding included
    batches: int
    seconds: float  # wall time of the language, compilation included
    compile_seconds: float  # dispatches that compiled a new batch shape

    @property
    def tokens_per_s(self) -> float:
        """Real tokens per second of steady-state work (compilation excluded)."""
        return self.tokens / max(self.seconds - self.compile_seconds, 1e-9)


def collect_language(step: Step, params: Any, encoded: EncodedTexts, *, cfg: ModelConfig, mesh: Mesh,
                     batch_size: int, pad_id: int = 0, padding_side: str = "right", pad_to_multiple: int = 16,
                     sort_by_length: bool = True, keep_token_topk: bool = False,
                     progress: Callable[[int], None] | None = None,
                     hidden: HiddenInputs | None = None) -> LanguageResult:
    """Runs ``step`` over all sequences of one language (every process calls this with the same data).
    ``hidden``: the inputs of a step made with ``hidden_states=True`` (this language's token sets).

    ``encoded``: the language's token sequences and count masks (``moe_jax.data.encode_texts``).
    Batching is ``moe_jax.data.batches`` (fixed ``batch_size``; lengths rounded up to
    ``pad_to_multiple``). ``progress(n)`` is called after each batch with its number of sequences.
    """
    if len(encoded.input_ids) != len(encoded.count_mask):
        raise ValueError(f"{len(encoded.input_ids)} sequences but {len(encoded.count_mask)} count masks")
    for i, (a, m) in enumerate(zip(encoded.input_ids, encoded.count_mask)):
        if len(a) != len(m) or len(a) == 0:
            raise ValueError(f"sequence {i}: {len(a)} ids, {len(m)} count-mask entries (must be equal, > 0)")
    shd.check_batch_size(batch_size, mesh)
    local = shd.process_rows(mesh, batch_size)
    acc = LanguageAccumulator(len(encoded), cfg.num_moe_layers, cfg.num_experts, keep_token_topk)
    t0 = time.perf_counter()
    tokens = padded = n_batches = 0
    compile_s = 0.0
    cache_size = getattr(step, "_cache_size", lambda: 0)

    def fetch(pending):
        rows, counted, out = pending
        acc.add(rows, jax.device_get(out), counted)
        if progress is not None:
            progress(int((rows >= 0).sum()))

    pending = None
    for b in batches(encoded, batch_size, pad_id=pad_id, padding_side=padding_side,
                     pad_to_multiple=pad_to_multiple, sort_by_length=sort_by_length):
        arrays = [shd.global_batch(mesh, x[local], batch_size) for x in (b.input_ids, b.attention_mask, b.count_mask)]
        compiled, t = cache_size(), time.perf_counter()
        extra = () if hidden is None else (hidden,)
        out = step(params, *arrays, *extra)  # dispatched asynchronously: overlaps with fetching the previous batch
        if cache_size() != compiled:  # this dispatch compiled a new shape (synchronously)
            compile_s += time.perf_counter() - t
        if pending is not None:
            fetch(pending)
        valid = b.seq_index >= 0
        pending = (b.seq_index, b.attention_mask.astype(bool) & b.count_mask, out)
        tokens += int(b.attention_mask[valid].sum())
        padded += b.attention_mask.size
        n_batches += 1
    if pending is not None:
        fetch(pending)
    seconds = time.perf_counter() - t0
    return LanguageResult(arrays=acc.arrays(), sequences=len(encoded), counted_tokens=acc.token_total,
                          tokens=tokens, padded_tokens=padded, batches=n_batches, seconds=seconds,
                          compile_seconds=compile_s)
