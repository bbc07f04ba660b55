"""Param tree -> HF safetensors checkpoint (the inverse of the loader; no torch needed).

Used by round-trip tests (HF -> params -> HF -> params) and to write random tiny HF checkpoints.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from moe_jax.io import storage
from moe_jax.io.storage import atomic_write_json
from moe_jax.convert import name_map
from moe_jax.convert.loader import hf_tensors_to_params
from moe_jax.convert.safetensors_io import INDEX_FILE, SINGLE_FILE, write_safetensors
from moe_jax.models.config import ModelConfig


def params_to_hf_tensors(cfg: ModelConfig, params: Any, fused_experts: bool = False) -> dict[str, np.ndarray]:
    """``{HF name: array}`` in the per-expert layout of released checkpoints (or the fused layout
    ``mlp.experts.gate_up_proj [E, 2I, H]`` / ``down_proj [E, H, I]``); dtypes as in ``params``."""
    sources = name_map.fused_plan(cfg) if fused_experts else name_map.plan(cfg)
    return {
        s.name: np.ascontiguousarray(name_map.to_hf(
            s.kind, *(np.asarray(name_map.target_value(params, s, t)) for t in s.targets), expert=s.expert))
        for s in sources
    }


def _split(names: list[str], sizes: list[int], num_shards: int) -> list[list[str]]:
    """Contiguous groups of roughly equal byte size, order kept, none empty."""
    total, groups, acc, g = max(sum(sizes), 1), [[] for _ in range(num_shards)], 0, 0
    for i, (name, size) in enumerate(zip(names, sizes)):
        if i:  # advance by at most one group per tensor, and early enough to fill every group
            g = max(g, min(acc * num_shards // total, g + 1), num_shards - (len(names) - i))
        groups[g].append(name)
        acc += size
    return groups


def write_hf_checkpoint(out_dir: str | os.PathLike, hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                        num_shards: int = 1, fused_experts: bool = False) -> str:
    """Writes ``config.json`` and ``tensors`` as ``model.safetensors`` or, for ``num_shards > 1``,
    ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json`` (written last).

    ``fused_experts=True`` rewrites per-expert tensors into the fused layout first (all tensors of
    a checkpoint of ``hf_config`` must be present). ``out_dir``: local or ``gs://``. Returns ``out_dir``.
    """
    out_dir = os.fspath(out_dir)
    if fused_experts:
        cfg = ModelConfig.from_hf(hf_config)
        dtypes = {np.asarray(x).dtype for x in tensors.values()}
        params = hf_tensors_to_params(cfg, dict(tensors), dtypes.pop() if len(dtypes) == 1 else "float32")
        tensors = params_to_hf_tensors(cfg, params, fused_experts=True)
    names = list(tensors)
    if not 1 <= num_shards <= len(names):
        raise ValueError(f"num_shards={num_shards} must be in [1, {len(names)}] (number of tensors)")
    storage.makedirs(out_dir)
    atomic_write_json(storage.join(out_dir, "config.json"), dict(hf_config))
    if num_shards == 1:
        write_safetensors(storage.join(out_dir, SINGLE_FILE), tensors)
        return out_dir
    weight_map, total = {}, 0
    groups = _split(names, [np.asarray(tensors[n]).nbytes for n in names], num_shards)
    for i, group in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        total += write_safetensors(storage.join(out_dir, file), {n: tensors[n] for n in group})
        weight_map.update({n: file for n in group})
    atomic_write_json(storage.join(out_dir, INDEX_FILE), {"metadata": {"total_size": total}, "weight_map": weight_map})
    return out_dir


