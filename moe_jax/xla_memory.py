"""XLA's own memory figures for the programs the stages compile, compiled ahead of time from shapes
(``jax.ShapeDtypeStruct``), so nothing is allocated: what the planner (``moe_jax.plan``) is checked
against, and what ``python -m moe_jax.plan --xla`` prints beside its estimate.

Programs (one per stage step, each as the stage jits it, on a mesh of the default sharding rules):

* ``collect``: routing collection's step (forward with router logits, no lm head, statistics),
  ``collect_batch x seq`` tokens;
* ``eval``: the scoring forward with logits (``eval.scoring.score_batch``), ``eval_batch x seq``;
* ``prefill`` / ``decode``: generation's KV-cache prefill into ``seq + max_gen_toks`` slots and one
  decode chunk of ``DECODE_CHUNK`` steps (the planner's KV cache is the prefill's cache output).

Every figure is per device (XLA analyses the partitioned program of one device).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from moe_jax import sharding as shd
from moe_jax.eval.scoring import score_batch
from moe_jax.models import generate as gen
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import param_shapes
from moe_jax.routing.collect import make_collect_step

DECODE_CHUNK = 32  # decode steps per compiled call (the eval harness's default chunk)


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """``compiled.memory_analysis()`` of one program, bytes per device."""

    arguments: int
    outputs: int
    temporaries: int
    aliased: int  # outputs that reuse an argument's buffer (donation)

    @classmethod
    def of(cls, compiled: Any) -> "ProgramMemory":
        m = compiled.memory_analysis()
        return cls(int(m.argument_size_in_bytes), int(m.output_size_in_bytes), int(m.temp_size_in_bytes),
                   int(m.alias_size_in_bytes))

    @property
    def activations(self) -> int:
        """What the program allocates besides its arguments: temporaries and outputs."""
        return self.temporaries + self.outputs - self.aliased


def _shapes(tree: Any, sharding: Any) -> Any:
    """ShapeDtypeStructs of ``tree``'s leaves (arrays or structs) placed by ``sharding`` (a tree or one)."""
    if not isinstance(sharding, (dict, list, tuple)):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sharding)


def param_structs(cfg: ModelConfig, mesh: Mesh, dtype: Any, rules: Mapping[str, str | None] | None = None) -> dict:
    """The parameter tree as ShapeDtypeStructs placed by the sharding rules on ``mesh``."""
    return _shapes(param_shapes(cfg, dtype), shd.param_shardings(cfg, mesh, rules))


def _rows(mesh: Mesh, batch: int) -> NamedSharding:
    """Batch rows over ``data`` when they divide (as the stages require), else replicated."""
    data = mesh.shape[shd.BATCH_AXIS]
    return NamedSharding(mesh, PartitionSpec(shd.BATCH_AXIS if batch % data == 0 else None))


def _tokens(mesh: Mesh, batch: int, seq: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=_rows(mesh, batch))


def token_bytes(mesh: Mesh, batch: int, seq: int) -> int:
    """Per-device bytes of one ``[batch, seq]`` int32 input of the stages."""
    data = mesh.shape[shd.BATCH_AXIS]
    return (batch // data if batch % data == 0 else batch) * seq * 4


def collect_program(cfg: ModelConfig, params: dict, mesh: Mesh, batch: int, seq: int, backend: str = "auto"):
    ids = _tokens(mesh, batch, seq)
    return make_collect_step(cfg, mesh, backend=backend).lower(params, ids, ids, ids).compile()


def eval_program(cfg: ModelConfig, params: dict, mesh: Mesh, batch: int, seq: int, backend: str = "auto"):
    ids = _tokens(mesh, batch, seq)
    last = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=_rows(mesh, batch))
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return score_batch.lower(params, cfg, ids, ids, last, None, backend=backend).compile()


def prefill_program(cfg: ModelConfig, params: dict, mesh: Mesh, batch: int, seq: int, max_gen_toks: int,
                    backend: str = "auto"):
    """Generation's prefill of prompts ``[batch, seq]`` into a fresh cache of ``seq + max_gen_toks``
    slots (at least one decode chunk)."""
    ids = _tokens(mesh, batch, seq)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return gen._prefill_jit.lower(params, cfg, ids, ids, seq + max(max_gen_toks, DECODE_CHUNK), None,
                                      backend).compile()


def decode_state(prefill: Any) -> Any:
    """The decode state a compiled ``prefill`` returns, as placed ShapeDtypeStructs."""
    return jax.tree.map(lambda o, s: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s), prefill.out_info,
                        prefill.output_shardings)


def decode_program(cfg: ModelConfig, params: dict, mesh: Mesh, state: Any, backend: str = "auto"):
    """One decode chunk (``DECODE_CHUNK`` greedy steps) from ``state`` (``decode_state`` or
    ``jax.eval_shape`` of a prefill)."""
    stop = jax.ShapeDtypeStruct((1,), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        return gen._decode_jit.lower(params, cfg, state, DECODE_CHUNK, stop, 0, None, backend, False).compile()


@dataclasses.dataclass(frozen=True)
class StageMemory:
    """XLA's figures per device in the planner's terms."""

    parameters: int  # the scoring forward's arguments less its token inputs (the collect step drops the lm head)
    collect: int  # activations of the collect step
    eval: int  # activations of the scoring forward
    kv_cache: int  # the KV cache (the prefill's k and v outputs)
    programs: dict[str, ProgramMemory]

    def as_dict(self) -> dict[str, int]:
        return {"parameters": self.parameters, "collect": self.collect, "eval": self.eval, "kv_cache": self.kv_cache}


def stage_memory(cfg: ModelConfig, mesh: Mesh, *, dtype: Any, collect_batch: int, eval_batch: int, seq: int,
                 max_gen_toks: int, rules: Mapping[str, str | None] | None = None,
                 backend: str = "auto") -> StageMemory:
    """XLA's memory analysis of the stages' programs for ``cfg`` on ``mesh`` (AOT; nothing allocated)."""
    params = param_structs(cfg, mesh, dtype, rules)
    collect = ProgramMemory.of(collect_program(cfg, params, mesh, collect_batch, seq, backend))
    ev = ProgramMemory.of(eval_program(cfg, params, mesh, eval_batch, seq, backend))
    prefill = prefill_program(cfg, params, mesh, eval_batch, seq, max_gen_toks, backend)
    inputs = 2 * token_bytes(mesh, eval_batch, seq) + token_bytes(mesh, eval_batch, 1)  # ids, mask, last index
    return StageMemory(ev.arguments - inputs, collect.activations,
                       ev.activations, _cache_bytes(prefill),
                       {"collect": collect, "eval": ev, "prefill": ProgramMemory.of(prefill)})


def _cache_bytes(prefill: Any) -> int:
    """Per-device bytes of the KV cache (k and v) the compiled prefill returns."""
    out = jax.tree.leaves(prefill.out_info.cache)[:2]  # k, v
    shards = jax.tree.leaves(prefill.output_shardings.cache)[:2]
    return sum(math.prod(s.shard_shape(o.shape)) * o.dtype.itemsize for o, s in zip(out, shards))
