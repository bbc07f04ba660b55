"""Loading a parameter tree from an HF checkpoint dir or a converted moe_jax dir, streaming.

HF path: ``scan_checkpoint`` checks every file, ``match_checkpoint`` checks every expected tensor
(names from ``name_map.plan``, shapes from ``config.json``) and rejects unknown extras -- all
before any tensor data is read. Then tensors are read one at a time, transformed to the param
layout, cast, and handed to a ``Sink``: NumPy on the host, or (``load_params``) each leaf placed
on its sharding, a run's layer stack allocated on its devices and filled row by row in place.
Per-expert tensors of a layer are written into one ``[E, ...]`` host buffer, written to its row of
the stack when its last expert arrives. Host memory therefore holds the output (unless placed on
devices) plus about one layer: the expert buffers of one layer and one raw tensor.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections import Counter
from typing import Any, Callable, Iterable, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from moe_jax.io import storage
from moe_jax.artifacts import checkpoint as digest
from moe_jax.convert import mxfp4, name_map, orbax_io
from moe_jax.convert import tokenizer as tokenizer_lib
from moe_jax.convert.safetensors_io import (DTYPES, CheckpointError, HFCheckpoint, TensorInfo, read_tensor,
                                            scan_checkpoint)
from moe_jax.models.config import SUPPORTED_DTYPES, ModelConfig
from moe_jax.models.model import MoeModel
from moe_jax.models.params import map_spec

log = logging.getLogger(__name__)

# Tensors some checkpoints carry that the model does not need.
HARMLESS_EXTRAS = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"),)
_MAX_LISTED = 8


AUTO = "auto"  # the checkpoint's own dtype (``native_dtype``)


def resolve_dtype(dtype: Any, native: Any = None) -> np.dtype | None:
    """``"float32" | "bfloat16" | "float16"`` (or the dtype object) -> NumPy dtype; ``"auto"`` -> the
    checkpoint's own dtype ``native`` (None when not given: the name is valid, the dtype comes from the
    checkpoint later); else ValueError."""
    if isinstance(dtype, str) and dtype == AUTO:
        return None if native is None else resolve_dtype(native)
    try:
        d = np.dtype(jax.numpy.dtype(dtype))
    except TypeError:
        d = None
    if d is None or d.name not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; supported: {AUTO!r} (the checkpoint's own), "
                         f"{', '.join(SUPPORTED_DTYPES)}")
    return d


def native_dtype(hf_dir: str, ckpt: HFCheckpoint) -> np.dtype:
    """An HF checkpoint's own dtype: ``dtype`` / ``torch_dtype`` of its config.json when supported, else
    the float dtype holding most of its stored bytes."""
    hf = json.loads(storage.read_bytes(storage.join(hf_dir, "config.json")))
    name = str(hf.get("dtype") or hf.get("torch_dtype") or "").replace("torch.", "")
    if name in SUPPORTED_DTYPES:
        return resolve_dtype(name)
    stored = Counter()
    for t in ckpt.tensors.values():
        if DTYPES[t.dtype].name in SUPPORTED_DTYPES:  # not MXFP4's U8 blocks
            stored[t.dtype] += t.nbytes
    return DTYPES[stored.most_common(1)[0][0]] if stored else np.dtype(np.float32)


def _listing(problems: list[str]) -> str:
    more = len(problems) - _MAX_LISTED
    return "\n  ".join(problems[:_MAX_LISTED] + ([f"... and {more} more"] if more > 0 else []))


def match_checkpoint(ckpt: HFCheckpoint, cfg: ModelConfig) -> list[tuple[name_map.Source, TensorInfo]]:
    """Pairs every expected tensor with its stored tensor; raises CheckpointError naming missing,
    mis-shaped and unexpected tensors (and their files). Reads no tensor data."""
    sources = name_map.plan(cfg, ckpt.shapes())
    pairs, missing, misshaped, used = [], [], [], set()

    def find(names, shape, packed: bool, companion: str = "") -> TensorInfo | None:
        name = next((n for n in names if n in ckpt.tensors), None)
        if name is None:
            missing.append(f"{names[0]}{companion} (expected shape {list(shape)})")
            return None
        info = ckpt.tensors[name]
        used.add(name)
        if info.shape != shape:
            misshaped.append(f"{name} in {info.file} has shape {list(info.shape)}, expected {list(shape)}")
        if (info.dtype == "U8") != packed:
            misshaped.append(f"{name} in {info.file} has dtype {info.dtype}, expected "
                             f"{'U8 (MXFP4)' if packed else 'a float dtype'}")
        return info

    for src in sources:
        info = find(src.names, src.shape, bool(src.scales))
        if src.scales:
            scales = find(src.scales, src.scales_shape, True, f" (the scales of {src.name})")
            info = None if info is None or scales is None else mxfp4.Packed(info, scales)
        if info is not None:
            pairs.append((src, info))
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.path} ({cfg.model_type}) lacks {len(missing)} tensor(s) expected "
                              f"from its config.json (searched {', '.join(os.path.basename(f) for f in ckpt.files)}):"
                              f"\n  {_listing(missing)}")
    if misshaped:
        raise CheckpointError(f"checkpoint {ckpt.path}: {len(misshaped)} tensor(s) do not match the shapes "
                              f"implied by config.json:\n  {_listing(misshaped)}")
    extra = [n for n in ckpt.tensors if n not in used]
    harmless = [n for n in extra if any(p.search(n) for p in HARMLESS_EXTRAS)
                or (cfg.tie_word_embeddings and n == "lm_head.weight")]
    unexpected = [f"{n} in {ckpt.tensors[n].file}" for n in extra if n not in harmless]
    if unexpected:
        raise CheckpointError(f"checkpoint {ckpt.path} ({cfg.model_type}) has {len(unexpected)} tensor(s) this "
                              f"converter does not know:\n  {_listing(unexpected)}")
    if harmless:
        log.warning("ignoring %d unused tensor(s) in %s, e.g. %s", len(harmless), ckpt.path, harmless[0])
    return pairs


class Sink(NamedTuple):
    """Where ``assemble`` puts the arrays it builds: the host (NumPy) or devices (``load_params``)."""

    place: Callable[[name_map.Path, np.ndarray], Any]  # a whole leaf
    empty: Callable[[name_map.Path, tuple[int, ...], np.dtype], Any]  # a layer stack, rows filled later
    write: Callable[[Any, int, np.ndarray], Any]  # one row into a stack -> the stack
    # A writable view of one row of a stack (host), filled expert by expert; None: rows are buffered.
    row_view: Callable[[Any, int], np.ndarray] | None = None


def _host_write(stack: np.ndarray, row: int, x: np.ndarray) -> np.ndarray:
    stack[row] = x
    return stack


HOST = Sink(lambda _, x: x, lambda _p, shape, dtype: np.empty(shape, dtype), _host_write,
            lambda stack, row: stack[row])


@functools.partial(jax.jit, donate_argnums=0)
def _set_row(stack: jax.Array, x: jax.Array, row: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(stack, x.astype(stack.dtype), row, 0)


def _row_sharding(s: Any) -> Any:
    """The sharding of one row of a stack sharded as ``s`` (the leading layer axis is never split)."""
    if isinstance(s, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(*s.spec[1:]))
    return s


def device_sink(shardings: Any) -> Sink:
    """Places leaves on their sharding from ``shardings`` (see ``name_map.sharding_at``) as they are
    read; a layer stack is allocated on its devices and filled row by row in place (donated), so
    the host never holds more than one layer of it."""
    def empty(path, shape, dtype):
        s = name_map.sharding_at(shardings, path)
        return jax.jit(lambda: jax.numpy.zeros(shape, dtype), out_shardings=s)()

    def write(stack, row, x):
        return _set_row(stack, jax.device_put(x, _row_sharding(stack.sharding)), np.int32(row))
    return Sink(lambda path, x: jax.device_put(x, name_map.sharding_at(shardings, path)), empty, write)


def assemble(cfg: ModelConfig, arrays: Iterable[tuple[name_map.Source, np.ndarray]], dtype: Any,
             sink: Sink = HOST) -> dict[str, Any]:
    """Builds the param tree from ``(source, HF array)`` pairs (in ``plan`` order).

    Each target is cast to ``dtype``. A top-level leaf goes to ``sink.place`` at once; a decoder
    layer's tensor fills its row of its run's stack (``sink.empty``, ``sink.write``); per-expert
    tensors go straight into the row on the host (``sink.row_view``), else into one ``[E, ...]``
    host buffer of that row, written when its last expert arrives. The tree holds what the sink
    returns.
    """
    dtype = resolve_dtype(dtype)
    tree = map_spec(lambda _p, _s: None, cfg)
    shapes = map_spec(lambda _p, s: s[0], cfg)
    stacks: dict[name_map.Path, list] = {}  # stacked target -> [stack, rows written]
    experts: dict[tuple, list] = {}  # (stacked target, row) -> [[E, ...] buffer, experts filled]

    def stack(path: name_map.Path) -> list:
        if path not in stacks:
            stacks[path] = [sink.empty(path, name_map.get_path(shapes, path), dtype), 0]
        return stacks[path]

    def row_done(path: name_map.Path) -> None:
        entry = stack(path)
        entry[1] += 1
        if entry[1] == name_map.get_path(shapes, path)[0]:
            name_map.set_path(tree, path, entry[0])
            del stacks[path]

    def write_row(path: name_map.Path, row: int, value: np.ndarray) -> None:
        entry = stack(path)
        entry[0] = sink.write(entry[0], row, np.ascontiguousarray(value, dtype=dtype))
        row_done(path)

    for src, x in arrays:
        for path, value in zip(src.targets, name_map.to_params(src.kind, x)):
            if src.row is None:
                name_map.set_path(tree, path, sink.place(path, np.ascontiguousarray(value, dtype=dtype)))
            elif src.kind != name_map.EXPERT:
                write_row(path, src.row, value)
            else:
                key = (path, src.row)
                if key not in experts:
                    buf = (sink.row_view(stack(path)[0], src.row) if sink.row_view
                           else np.empty(name_map.get_path(shapes, path)[1:], dtype))
                    experts[key] = [buf, 0]
                entry = experts[key]
                entry[0][src.expert] = value
                entry[1] += 1
                if entry[1] == cfg.num_experts:
                    del experts[key]
                    if sink.row_view:
                        row_done(path)
                    else:
                        write_row(path, src.row, entry[0])
    if experts or stacks:
        path = sorted(experts)[0][0] if experts else sorted(stacks)[0]
        raise CheckpointError(f"incomplete layer stack for parameter {'/'.join(map(str, path))}")
    unset = list(_none_paths(tree))
    if unset:
        raise CheckpointError(f"no tensor for parameter {'/'.join(map(str, unset[0]))}")
    return tree


def _none_paths(tree: Any, prefix: tuple = ()) -> Iterable[tuple]:
    if tree is None:
        yield prefix
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _none_paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _none_paths(v, prefix + (i,))


def hf_tensors_to_params(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype: Any = "float32") -> dict[str, Any]:
    """In-memory conversion of a ``{HF name: array}`` dict (tests, small models)."""
    sources = name_map.plan(cfg, {n: tuple(x.shape) for n, x in tensors.items()})
    missing = [n[0] for s in sources for n in (s.names, s.scales) if n and not any(x in tensors for x in n)]
    if missing:
        raise CheckpointError(f"{len(missing)} tensor(s) missing:\n  {_listing(missing)}")

    def get(names):
        return np.asarray(tensors[next(n for n in names if n in tensors)])
    arrays = ((s, mxfp4.dequantize(get(s.names), get(s.scales), s.name.removesuffix(mxfp4.BLOCKS)) if s.scales
               else get(s.names)) for s in sources)
    return assemble(cfg, arrays, dtype)


def load_hf_config(path: str | os.PathLike) -> ModelConfig:
    """Reads ``config.json`` from a checkpoint directory (or the file itself), local or ``gs://``
    (the reading lives here: ``models/`` does no file I/O, ``ModelConfig.from_hf`` takes the dict)."""
    path = os.fspath(path)
    if storage.isdir(path):
        path = storage.join(path, "config.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        hf = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return ModelConfig.from_hf(hf)


def open_hf(path: str | os.PathLike) -> tuple[ModelConfig, HFCheckpoint, list]:
    """Config + scanned checkpoint + matched tensors: every check, no tensor data read."""
    cfg = load_hf_config(path)
    ckpt = scan_checkpoint(path)
    return cfg, ckpt, match_checkpoint(ckpt, cfg)


def read_source(info: TensorInfo | mxfp4.Packed) -> np.ndarray:
    """One matched tensor as an array in the HF layout (MXFP4-packed weights dequantised)."""
    return mxfp4.read_packed(info) if isinstance(info, mxfp4.Packed) else read_tensor(info)


def stream_hf(cfg: ModelConfig, pairs: list, dtype: Any, sink: Sink = HOST,
              desc: str = "loading tensors") -> dict[str, Any]:
    """Reads the matched tensors one by one (tqdm bar) into a param tree."""
    arrays = ((src, read_source(info)) for src, info in tqdm(pairs, desc=desc, unit="tensor"))
    return assemble(cfg, arrays, dtype, sink)


def checkpoint_kind(path: str | os.PathLike) -> str:
    """``"converted"`` or ``"hf"`` (local or ``gs://``); raises for a missing dir or an incomplete
    conversion (no ``moe_jax.json``, or still carrying the ``moe_jax.partial.json`` of a write into a
    ``gs://`` prefix that has not finished), naming the command that converts it again."""
    path = os.fspath(path)
    if not storage.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    partial = storage.join(path, orbax_io.PARTIAL_FILE)
    if storage.exists(partial):
        source = (storage.read_json(partial, invalid_ok=True) or {}).get("source") or "<hf dir>"
        raise CheckpointError(f"{path} is an incomplete moe_jax conversion ({orbax_io.PARTIAL_FILE}: it is being "
                              f"written, or its conversion was interrupted); convert again: rerun the convert stage "
                              f"(python -m moe_jax.launch ... --stages=convert), or python -m moe_jax.convert "
                              f"--hf_dir={source} --out={path}")
    if storage.exists(storage.join(path, orbax_io.META_FILE)):
        return "converted"
    if storage.isdir(storage.join(path, orbax_io.PARAMS_DIR)):
        raise CheckpointError(f"{path} is an incomplete moe_jax conversion (no {orbax_io.META_FILE}); convert again")
    if storage.exists(storage.join(path, "config.json")):
        return "hf"
    raise FileNotFoundError(f"{path} is neither an HF checkpoint (config.json + safetensors) "
                            f"nor a converted moe_jax dir ({orbax_io.META_FILE})")


def load_params(path: str | os.PathLike, dtype: Any = "float32", shardings: Any = None) -> tuple[ModelConfig, dict]:
    """Loads ``(ModelConfig, params)`` from an HF checkpoint dir or a converted moe_jax dir.

    Leaves are ``jax.Array`` in ``dtype`` (float32 | bfloat16 | float16, or "auto": the checkpoint's
    own), each placed on its sharding from ``shardings`` (a tree like the params, or one ``Sharding``
    for all leaves, or None for the default device) as soon as it is read. Every check (dtype, config,
    files, tensor names and shapes; for a converted dir, every recorded file present at its size)
    runs before any tensor data is read. A converted dir loaded in a wider dtype than it was converted
    to from a wider source (float32 -> bfloat16 -> load as float32) logs a warning: the precision
    lost in the conversion does not come back.
    """
    resolve_dtype(dtype)
    if checkpoint_kind(path) == "converted":
        try:
            meta = orbax_io.read_meta(path)
        except CheckpointError as e:  # moe_jax.json itself damaged: nothing records what else was written
            raise CheckpointError(f"{e}\nThe conversion's record is damaged: remove {os.fspath(path)} and convert "
                                  "again (the convert stage, or python -m moe_jax.convert)") from None
        check_conversion_files(os.fspath(path), meta, content=False)
        np_dtype = resolve_dtype(dtype, meta.get("dtype"))
        warn_precision(os.fspath(path), meta, np_dtype)
        return orbax_io.restore(path, np_dtype, shardings)
    cfg, ckpt, pairs = open_hf(path)
    np_dtype = resolve_dtype(dtype, native_dtype(os.fspath(path), ckpt))
    return cfg, stream_hf(cfg, pairs, np_dtype, device_sink(shardings))


def checkpoint_config(path: str | os.PathLike) -> ModelConfig:
    """The ``ModelConfig`` of an HF checkpoint dir or a converted moe_jax dir, no tensor read."""
    if checkpoint_kind(path) == "converted":
        return ModelConfig.from_dict(orbax_io.read_meta(path)["config"])
    return load_hf_config(path)


def load_model(path: str | os.PathLike, dtype: str = "float32", *, shardings: Any = None,
               backend: str = "auto", load_tokenizer: bool = True) -> MoeModel:
    """Loads an HF checkpoint directory or a converted moe_jax directory as a callable ``MoeModel``
    (``moe_jax.load``, re-exported by ``moe_jax.api``).

    Args:
      path: directory with ``config.json`` + safetensors, or the output of ``moe_jax.convert``.
      dtype: parameter/activation dtype, "float32", "bfloat16", "float16" or "auto" (the checkpoint's
        own). Loading a conversion that narrowed its source (float32 -> bfloat16) as float32 logs a
        warning: its logits stay ~1e-2 off the float32 reference.
      shardings: optional tree of ``jax.sharding.Sharding`` matching the params (see
        ``moe_jax.sharding``); each tensor is placed as it is read.
      backend: the routed experts' dispatch backend (``MoeModel``).
      load_tokenizer: attach the checkpoint's tokenizer (None when it has none).
    """
    cfg, params = load_params(path, dtype=dtype, shardings=shardings)
    tokenizer = _maybe_tokenizer(path) if load_tokenizer else None
    return MoeModel(cfg, params, tokenizer=tokenizer, backend=backend)


def _maybe_tokenizer(path: str | os.PathLike) -> Any:
    """The checkpoint's tokenizer (local or ``gs://``, see ``convert.tokenizer``), or None without one."""
    path = os.fspath(path)
    if not any(storage.exists(storage.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return tokenizer_lib.load_tokenizer(path)


def check_conversion_files(path: str, meta: dict, *, content: bool) -> None:
    """CheckpointError naming the damaged files of a converted dir (``digest.damage`` against the
    record in its ``moe_jax.json``; conversions from before the record pass) and the repair."""
    problems = digest.damage(path, meta.get("files", {}), content=content)
    if problems:
        raise CheckpointError(
            f"the converted checkpoint {path} is damaged ({len(problems)} file(s)):\n  {_listing(problems)}\n"
            "Convert it again: rerun the convert stage (python -m moe_jax.launch ... --stages=convert), or "
            f"python -m moe_jax.convert --hf_dir={meta.get('source', '<hf dir>')} --out={path} --overwrite")


def warn_precision(path: str, meta: dict, dtype: np.dtype) -> None:
    """Warns when loading widens a conversion that itself narrowed its source's dtype."""
    stored, source = meta.get("dtype"), meta.get("source_dtype")
    width = lambda name: np.dtype(resolve_dtype(name)).itemsize  # noqa: E731
    if stored is None or dtype.itemsize <= width(stored) or (source is not None and width(source) <= width(stored)):
        return
    log.warning("%s was converted to %s from %s weights; loading it as %s does not restore the precision "
                "lost in the conversion: logits differ from a %s reference of the original weights by about "
                "1e-2. For %s accuracy convert again with dtype %s (or 'auto', the checkpoint's own)",
                path, stored, source or "wider (unrecorded)", dtype.name, dtype.name, dtype.name, dtype.name)
