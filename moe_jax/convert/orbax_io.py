"""The converted-checkpoint directory: an orbax checkpoint of the param tree plus metadata.

Layout of a converted dir::

    params/          orbax checkpoint of the param tree (decoder layers stacked per run, see
                     ``moe_jax.models.params``), one zarr array per leaf (lists round-trip)
    config.json      copy of the HF config
    tokenizer files  copies (tokenizer.json, tokenizer_config.json, ... when present)
    moe_jax.json     {"format", "format_version", "config": ModelConfig.to_dict(), "dtype",
                      "source", "checkpoint_sha256", "moe_jax_version", "num_params", "files"}

``moe_jax.json`` is written last: a dir without it is not a complete conversion and is refused.
On ``gs://`` (no rename) the conversion is written straight into its prefix, marked by
``moe_jax.partial.json`` from its first object until after ``moe_jax.json``: a prefix carrying the
marker is refused too (``loader.checkpoint_kind``).

Chunking (what a host of a pod reads): every leaf is one zarr array; the routed-expert stacks
(``EXPERT_STACKS``: ``moe/gate|up|down[_bias]``, ``[layers, E, ...]``) have one chunk per expert
(``shard_axes``), further split to at most ``chunk_bytes``; other leaves are split to about 1/32
along their largest axes. Restoring onto an expert-sharded mesh, a host reads only the chunks of
the experts its devices hold.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from moe_jax.io import storage
from moe_jax.convert import name_map
from moe_jax.convert.safetensors_io import CheckpointError
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import map_spec

META_FILE = "moe_jax.json"
PARTIAL_FILE = "moe_jax.partial.json"  # on gs://: a conversion being written into this prefix
PARAMS_DIR = "params"
FORMAT = "moe_jax.params"
# 2: decoder layers stacked per run of identical layers (``params["layers"]``: one dict per run,
# leaves with a leading [layers] axis); 1 had one dict per decoder layer and must be converted again.
FORMAT_VERSION = 2


WRITE_BUFFER_BYTES = 64 * 2**20  # arrays being written at once (at least one, whatever its size)
# Zarr chunks of a leaf: about 1/32 of it, between 1 and 64 MB. A layer stack is written chunk by
# chunk, each under a layer's slice, and the encode buffers in flight grow with the chunk size
# (measured: 1/32 of a 67 MB stack, ~2 MB, keeps a save within ~50 MB of the tree; one 67 MB chunk
# adds ~140 MB), while a real model's leaves stay at about a thousand files.
CHUNK_PARTS, MIN_CHUNK_BYTES, MAX_CHUNK_BYTES = 32, 2**20, 64 * 2**20


def chunk_bytes(nbytes: int) -> int:
    return min(max(nbytes // CHUNK_PARTS, MIN_CHUNK_BYTES), MAX_CHUNK_BYTES)


class _BoundedNumpyHandler(ocp.type_handlers.NumpyHandler):
    """Writes NumPy leaves without copying them first and with at most ``max_bytes`` of arrays in
    flight (orbax's NumpyHandler deep-copies every leaf and starts every write at once, so the
    encode buffers of the whole tree can be alive together)."""

    def __init__(self, max_bytes: int):
        super().__init__(deepcopy_host_arrays=False)
        self._max_bytes, self._in_flight, self._cond = max_bytes, 0, None

    async def _open_and_write(self, value, tspec, ts_context):
        if self._cond is None:  # created inside the event loop that runs the writes
            self._cond = asyncio.Condition()
        async with self._cond:
            await self._cond.wait_for(lambda: self._in_flight == 0 or self._in_flight + value.nbytes <= self._max_bytes)
            self._in_flight += value.nbytes
        try:
            await super()._open_and_write(value, tspec, ts_context)
        finally:
            async with self._cond:
                self._in_flight -= value.nbytes
                self._cond.notify_all()


def save_tree(path: str, tree: Any, max_bytes_in_flight: int = WRITE_BUFFER_BYTES) -> None:
    """Writes the param tree (NumPy or jax arrays) as an orbax checkpoint at ``path`` (local or
    ``gs://``; must not exist).

    Chunks (``save_args``): the routed-expert stacks one per expert, so a host restoring some experts
    reads only their chunks; every chunk at most ``chunk_bytes`` of its leaf.
    Host memory beyond the tree: about ``max(max_bytes_in_flight, largest leaf)`` of leaves in
    flight, encoded in chunks, not copied. Orbax's
    defaults would add about one more copy of the tree (NumPy leaves deep-copied, OCDBT buffering
    every array until commit), so this writes one zarr array per leaf (no OCDBT), uncopied.
    """
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, _BoundedNumpyHandler(max_bytes_in_flight)),
        (jax.Array, ocp.type_handlers.ArrayHandler()),
    )
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_ocdbt=False)
    # Only the calling process takes part: under jax.distributed, process 0 converts alone while the
    # others wait at the stage barrier (orbax would otherwise wait for every process to save).
    me = jax.process_index()
    solo = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    with ocp.Checkpointer(handler, multiprocessing_options=solo) as ckptr:
        ckptr.save(storage.absolute(path), args=ocp.args.PyTreeSave(tree, save_args=save_args(tree)))


# The routed-expert stacks of the param tree: ``layers[run]["moe"][name]``, ``[layers, E, ...]``
# (``params.layer_spec``: logical axis "expert" right after the stack's layers axis, the axis expert
# parallelism splits). tests/test_convert_gcs.py checks this against the spec of every family.
EXPERT_STACKS, EXPERT_AXIS = ("gate", "up", "down", "gate_bias", "up_bias", "down_bias"), 1


def expert_axes(path: tuple) -> tuple[int, ...]:
    """The axes of the leaf at ``path`` (a tuple of keys) stored one chunk per index: ``(EXPERT_AXIS,)``
    for a routed-expert stack, else ``()``."""
    keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
    is_stack = len(keys) == 4 and keys[0] == "layers" and keys[2] == "moe" and keys[3] in EXPERT_STACKS
    return (EXPERT_AXIS,) if is_stack else ()


def save_args(tree: Any) -> Any:
    """``ocp.SaveArgs`` per leaf: chunks of at most ``chunk_bytes``, and one per expert of a
    routed-expert stack (orbax's ``shard_axes`` splits an axis down to size 1)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: ocp.SaveArgs(chunk_byte_size=chunk_bytes(x.nbytes), shard_axes=expert_axes(p)), tree)


def read_meta(path: str) -> dict[str, Any]:
    meta_path = storage.join(path, META_FILE)
    try:
        meta = json.loads(storage.read_bytes(meta_path))
    except (OSError, ValueError) as e:  # missing, unreadable, not JSON (or not UTF-8)
        raise CheckpointError(f"cannot read {meta_path}: {e}") from e
    if meta.get("format") == FORMAT and isinstance(meta.get("format_version"), int) \
            and meta["format_version"] < FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was converted by an older moe_jax (format v{meta['format_version']}, one parameter dict "
            f"per decoder layer); this version stacks the layers (format v{FORMAT_VERSION}). Convert it again: "
            f"python -m moe_jax.convert --hf_dir={meta.get('source') or '<hf dir>'} --out={path} --overwrite")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: unknown format {meta.get('format')!r} "
                              f"version {meta.get('format_version')!r} (expected {FORMAT} v{FORMAT_VERSION})")
    return meta


def restore(path: str, dtype: np.dtype, shardings: Any = None) -> tuple[ModelConfig, dict[str, Any]]:
    """Restores ``(cfg, params)`` from a converted dir, each leaf cast to ``dtype`` and restored
    directly onto its sharding (a tree like the params, one Sharding, or None: default device)."""
    meta = read_meta(path)
    cfg = ModelConfig.from_dict(meta["config"])
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def target(p, spec):
        s = name_map.sharding_at(shardings, tuple(int(k) if k.isdigit() else k for k in p))
        return jax.ShapeDtypeStruct(spec[0], dtype, sharding=s or default)

    params_dir = storage.absolute(storage.join(path, PARAMS_DIR))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir, map_spec(target, cfg))
    except Exception as e:  # orbax raises many types; name the dir
        raise CheckpointError(f"cannot restore the parameters in {params_dir}: {type(e).__name__}: {e}") from e
    return cfg, params
