"""HF checkpoint dir -> converted moe_jax dir (orbax params + metadata + tokenizer files).

Order of work, so that bad input never leaves anything behind and a crash never leaves a dir
that loads as complete:
1. every check (dtype, --out, config.json, all safetensors headers, tensor names and shapes,
   tokenizer files when required);
2. tensors streamed one at a time into the param tree (tqdm bar; a tensor holding NaN or inf is
   refused, naming it), then saved with orbax, into a sibling temp dir ``.{out}.tmp-*``;
   config/tokenizer files copied; ``moe_jax.json`` written last, with the size and sha256 of every
   other file (``digest``: loads check the sizes, the convert stage the sha256);
3. the temp dir renamed to ``out`` (an existing ``out`` is moved aside first and removed after).
On any error the temp dir is removed and an existing ``out`` is untouched.

``overwrite`` replaces only a directory that moe_jax wrote (its ``moe_jax.json`` says so) or an
empty one, and never one that overlaps the input: a user's own files are never deleted. Temp dirs
of an earlier killed conversion to the same ``out`` (``.{out}.tmp-XXXXXXXX``) are removed, with a
log line, by the next one.

On ``gs://`` (no rename, no directories) steps 2-3 differ: once the tensors are read and checked,
a marker object ``moe_jax.partial.json`` is written into the prefix first, then what an earlier
conversion (or an interrupted one) left there is deleted (``moe_jax.json`` first), then params,
config and tokenizer files and ``moe_jax.json`` are written in place, and the marker removed last.
A prefix with the marker, or without ``moe_jax.json``, is never loaded; the next conversion to it
replaces it (a marker is ours), while a prefix holding anything else is refused. An error removes
what was written; a kill leaves the marker. Unlike a local ``--overwrite``, the replaced
conversion is gone before the new one is complete.

Peak host memory: the output tree (in the target dtype) plus about one layer: the stacked expert
buffers of the layer being read (``3 * E * H * I`` target-dtype elements) and one raw tensor in
the stored dtype. Measured in ``tests/test_convert_memory.py``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time

import jax

from moe_jax import __version__
from moe_jax.io import storage
from moe_jax.artifacts import checkpoint as digest
from moe_jax.convert import loader, orbax_io
from moe_jax.convert.tokenizer import TOKENIZER_FILES, TOKENIZER_SETS, missing_tokenizer  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

PARTIAL_FORMAT = "moe_jax.partial"  # the marker's "format": what the writer of the prefix was


def convert_checkpoint(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: str = "auto",
                       overwrite: bool = False, require_tokenizer: bool = False) -> str:
    """Converts an HF checkpoint dir into a moe_jax dir at ``out_dir``; returns ``out_dir``.

    ``dtype`` "auto" (default) keeps the checkpoint's own dtype (``loader.native_dtype``: config.json's
    ``dtype`` / ``torch_dtype``, else the stored one); a narrower one loses precision for good (a
    float32 checkpoint converted to bfloat16 gives logits ~1e-2 off the float32 reference, however it
    is loaded later). Raises (before writing anything) ValueError for an unsupported ``dtype``, an
    ``out_dir`` that overlaps ``hf_dir`` or that ``overwrite`` may not replace (not written by
    moe_jax), FileExistsError for an existing ``out_dir`` without ``overwrite`` and, with
    ``require_tokenizer``, for an ``hf_dir`` without tokenizer files (``missing_tokenizer``),
    UnsupportedModelError / CheckpointError for a bad checkpoint (naming the file and tensor; a
    tensor holding NaN or inf is refused as it is read, still before ``out_dir`` changes).
    """
    loader.resolve_dtype(dtype)
    hf_dir, out_dir = storage.absolute(hf_dir), storage.absolute(out_dir)
    check_out_dir(hf_dir, out_dir, overwrite)
    cfg, ckpt, pairs = loader.open_hf(hf_dir)
    no_tokenizer = missing_tokenizer(hf_dir)
    if no_tokenizer and require_tokenizer:
        raise FileNotFoundError(no_tokenizer)
    source_dtype = loader.native_dtype(hf_dir, ckpt)
    np_dtype = loader.resolve_dtype(dtype, source_dtype)
    info = {"source": hf_dir, "checkpoint_sha256": ckpt.sha256, "source_dtype": source_dtype.name}
    if storage.is_remote(out_dir):
        _convert_remote(cfg, pairs, np_dtype, info, out_dir)
    else:
        _convert_local(cfg, pairs, np_dtype, info, out_dir)
    if no_tokenizer:
        log.warning("the conversion %s has no tokenizer (moe_jax.load gives none; the pipeline stages need "
                    "one): %s", out_dir, no_tokenizer)
    return out_dir


def _convert_local(cfg, pairs, np_dtype, info: dict, out_dir: str) -> None:
    """Writes into a sibling temp dir, renamed to ``out_dir`` once complete (see the module docstring)."""
    remove_stale_temps(out_dir)
    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0o700 would stick to the final dir
    try:
        _write(tmp, cfg, [loader.stream_hf(cfg, pairs, np_dtype, desc=f"converting to {np_dtype.name}")], np_dtype,
               info)
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _convert_remote(cfg, pairs, np_dtype, info: dict, out_dir: str) -> None:
    """Object storage has no rename: writes straight into ``out_dir``, marked by ``PARTIAL_FILE``
    (first) until ``moe_jax.json`` (last) is written. What an earlier conversion or an interrupted
    one left there is deleted only once the new parameters are read and checked. A failure removes
    what this conversion wrote (the marker last); a kill leaves the marker, which ``load`` refuses
    and the next conversion to ``out_dir`` replaces."""
    params = [loader.stream_hf(cfg, pairs, np_dtype, desc=f"converting to {np_dtype.name}")]
    marker = storage.join(out_dir, orbax_io.PARTIAL_FILE)
    storage.atomic_write_json(marker, {"format": PARTIAL_FORMAT, "writer": "moe_jax.convert", "source": info["source"],
                                       "moe_jax_version": __version__,
                                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    try:
        _clear_remote(out_dir)
        _write(out_dir, cfg, params, np_dtype, info)
        storage.remove(marker)
    except BaseException:
        log.warning("conversion into %s failed; removing what it wrote", out_dir)
        try:
            _clear_remote(out_dir)
            storage.remove(marker)
        except Exception as e:  # storage itself failing: keep the error that stopped the conversion
            log.warning("could not remove what the failed conversion wrote into %s (%s: %s); its %s stays, "
                        "so it is never loaded and the next conversion replaces it", out_dir, type(e).__name__, e,
                        orbax_io.PARTIAL_FILE)
        raise


def _clear_remote(out_dir: str) -> None:
    """Deletes every object under ``out_dir`` but the partial marker (``moe_jax.json`` first: from
    then on nothing there looks complete, even without the marker)."""
    names = storage.listdir(out_dir)
    if orbax_io.META_FILE in names:
        storage.remove(storage.join(out_dir, orbax_io.META_FILE))
    for name in names:
        if name not in (orbax_io.META_FILE, orbax_io.PARTIAL_FILE):
            target = storage.join(out_dir, name)
            if storage.isfile(target):
                storage.remove(target)
            else:
                storage.remove_tree(target)


def _write(dest: str, cfg, params: list, np_dtype, info: dict) -> None:
    """Params (orbax), config and tokenizer files, then ``moe_jax.json`` (with every file's record) last.
    ``params``: ``[tree]``, emptied once saved, so that the tree is freed before the files are hashed
    (the hashing threads' buffers would otherwise add to the peak: ~50 MB in test_convert_memory)."""
    orbax_io.save_tree(storage.join(dest, orbax_io.PARAMS_DIR), params[0])
    num_params = sum(x.size for x in jax.tree.leaves(params.pop()))
    # Local to local: shutil.copyfile (in-kernel), as before. Python-level read buffers of 16 MiB raised
    # glibc's mmap threshold and kept the save's later buffers on the heap: +40-50 MB peak measured in
    # test_convert_memory (storage reads 1 MiB at a time since).
    local = not (storage.is_remote(info["source"]) or storage.is_remote(dest))
    for name in ("config.json",) + TOKENIZER_FILES:
        src = storage.join(info["source"], name)
        if storage.isfile(src):
            (shutil.copyfile if local else storage.copy_file)(src, storage.join(dest, name))
    meta = {
        "format": orbax_io.FORMAT, "format_version": orbax_io.FORMAT_VERSION,
        "config": cfg.to_dict(), "dtype": np_dtype.name, "source_dtype": info["source_dtype"],
        "source": info["source"], "checkpoint_sha256": info["checkpoint_sha256"], "moe_jax_version": __version__,
        "num_params": int(num_params), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # checked on load (sizes) and by the convert stage (sha256)
        "files": digest.record_files(dest, skip=(orbax_io.PARTIAL_FILE,)),
    }
    storage.atomic_write_bytes(storage.join(dest, orbax_io.META_FILE), json.dumps(meta, indent=2).encode())


def check_out_dir(hf_dir: str, out_dir: str, overwrite: bool) -> None:
    """Refuses an ``out_dir`` that overlaps ``hf_dir`` (equal, inside or containing it), and an
    existing one without ``overwrite`` or that moe_jax did not write (no ``moe_jax.json`` of its format).
    A ``gs://`` prefix left by an interrupted conversion (its ``PARTIAL_FILE``) is replaced without
    ``overwrite``, as the local temp dirs of one are removed; one holding anything else is refused."""
    if storage.is_remote(hf_dir) == storage.is_remote(out_dir):
        # URLs have no links to resolve: compared as given
        real_in, real_out = ((hf_dir.rstrip("/"), out_dir.rstrip("/")) if storage.is_remote(out_dir)
                             else (os.path.realpath(hf_dir), os.path.realpath(out_dir)))
        if real_out == real_in or _inside(real_out, real_in) or _inside(real_in, real_out):
            rel = "is" if real_out == real_in else "is inside" if _inside(real_out, real_in) else "contains"
            raise ValueError(f"output dir {out_dir} {rel} the input dir {hf_dir}; choose an --out outside it")
    if storage.is_remote(out_dir):
        _check_remote_out_dir(out_dir, overwrite)
        return
    if not os.path.lexists(out_dir):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    if os.path.isdir(out_dir) and not os.path.islink(out_dir) and (not os.listdir(out_dir) or _is_conversion(out_dir)):
        return
    _refuse_foreign(out_dir)


def _check_remote_out_dir(out_dir: str, overwrite: bool) -> None:
    names = storage.listdir(out_dir)
    if not names:
        return
    if orbax_io.PARTIAL_FILE in names and _is_ours(storage.join(out_dir, orbax_io.PARTIAL_FILE), PARTIAL_FORMAT):
        log.warning("%s holds an incomplete conversion (%s: interrupted, or being written); it will be replaced",
                    out_dir, orbax_io.PARTIAL_FILE)
        return
    if not _is_conversion(out_dir):
        _refuse_foreign(out_dir, names)
    if not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")


def _refuse_foreign(out_dir: str, names: list[str] | None = None) -> None:
    held = f" (it holds {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
    raise ValueError(f"{out_dir} exists and is not a moe_jax conversion (no {orbax_io.META_FILE} with format "
                     f"{orbax_io.FORMAT!r}){held}; --overwrite only replaces a directory moe_jax wrote. "
                     "Remove it yourself or choose another --out")


def is_intact(out_dir: str) -> bool:
    """``out_dir`` is a complete conversion whose recorded files all have their size and sha256
    (``digest``); a damaged one is logged, naming its files."""
    if storage.exists(storage.join(out_dir, orbax_io.PARTIAL_FILE)):
        log.warning("%s is an incomplete conversion (%s); it will be converted again", out_dir, orbax_io.PARTIAL_FILE)
        return False
    try:
        meta = orbax_io.read_meta(out_dir)
    except loader.CheckpointError as e:
        log.warning("%s; it will be converted again", e)
        return False
    problems = digest.damage(out_dir, meta.get("files", {}))
    if problems:
        log.warning("the converted checkpoint %s is damaged; it will be converted again:\n  %s", out_dir,
                    "\n  ".join(problems))
    return not problems


def _inside(path: str, parent: str) -> bool:
    return path.startswith(parent.rstrip(os.sep) + os.sep)  # os.sep is "/" where URLs are used


def _is_conversion(path: str) -> bool:
    return _is_ours(storage.join(path, orbax_io.META_FILE), orbax_io.FORMAT)


def _is_ours(path: str, fmt: str) -> bool:
    """``path`` is a JSON object whose "format" is ``fmt`` (a file moe_jax wrote)."""
    try:
        meta = storage.read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == fmt


def remove_stale_temps(out_dir: str) -> list[str]:
    """Removes the temp dirs ``.{base}.tmp-XXXXXXXX`` (mkdtemp's naming) that a killed conversion to
    ``out_dir`` left beside it, and ``.{base}.old-XXXXXXXX`` (a replaced conversion, killed before it
    was removed); returns their paths. Nothing to do on ``gs://`` (a conversion is written in place)."""
    if storage.is_remote(out_dir):
        return []
    parent, base = os.path.split(os.path.abspath(out_dir))
    pattern = re.compile(re.escape(f".{base}.") + r"(tmp|old)-[a-z0-9_]{8}")
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        path = os.path.join(parent, name)
        if pattern.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path):
            log.warning("removing %s, left by an earlier conversion to %s that was killed", path, out_dir)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _install(tmp: str, out_dir: str) -> None:
    """Renames the finished ``tmp`` to ``out_dir``, replacing an existing one only now."""
    if not os.path.exists(out_dir):
        os.rename(tmp, out_dir)
        return
    old = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=f".{os.path.basename(out_dir)}.old-")
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    if os.path.isdir(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)

