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
from moe_jax.convert import digest, loader, orbax_io
from moe_jax.convert.tokenizer import TOKENIZER_FILES, TOKENIZER_SETS, missing_tokenizer  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


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
    hf_dir, out_dir = os.path.abspath(os.fspath(hf_dir)), os.path.abspath(os.fspath(out_dir))
    check_out_dir(hf_dir, out_dir, overwrite)
    cfg, ckpt, pairs = loader.open_hf(hf_dir)
    no_tokenizer = missing_tokenizer(hf_dir)
    if no_tokenizer and require_tokenizer:
        raise FileNotFoundError(no_tokenizer)
    source_dtype = loader.native_dtype(hf_dir, ckpt)
    np_dtype = loader.resolve_dtype(dtype, source_dtype)
    remove_stale_temps(out_dir)

    parent, base = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.tmp-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0o700 would stick to the final dir
    try:
        params = loader.stream_hf(cfg, pairs, np_dtype, desc=f"converting to {np_dtype.name}")
        orbax_io.save_tree(os.path.join(tmp, orbax_io.PARAMS_DIR), params)
        num_params = sum(x.size for x in jax.tree.leaves(params))
        del params
        for name in ("config.json",) + TOKENIZER_FILES:
            src = os.path.join(hf_dir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(tmp, name))
        meta = {
            "format": orbax_io.FORMAT, "format_version": orbax_io.FORMAT_VERSION,
            "config": cfg.to_dict(), "dtype": np_dtype.name, "source_dtype": source_dtype.name, "source": hf_dir,
            "checkpoint_sha256": ckpt.sha256, "moe_jax_version": __version__, "num_params": int(num_params),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "files": digest.record_files(tmp),  # checked on load (sizes) and by the convert stage (sha256)
        }
        meta_tmp = os.path.join(tmp, orbax_io.META_FILE + ".tmp")
        with open(meta_tmp, "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(meta_tmp, os.path.join(tmp, orbax_io.META_FILE))  # last: marks the dir complete
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if no_tokenizer:
        log.warning("the conversion %s has no tokenizer (moe_jax.load gives none; the pipeline stages need "
                    "one): %s", out_dir, no_tokenizer)
    return out_dir


def check_out_dir(hf_dir: str, out_dir: str, overwrite: bool) -> None:
    """Refuses an ``out_dir`` that overlaps ``hf_dir`` (equal, inside or containing it), and an
    existing one without ``overwrite`` or that moe_jax did not write (no ``moe_jax.json`` of its format)."""
    real_in, real_out = os.path.realpath(hf_dir), os.path.realpath(out_dir)
    if real_out == real_in or _inside(real_out, real_in) or _inside(real_in, real_out):
        rel = "is" if real_out == real_in else "is inside" if _inside(real_out, real_in) else "contains"
        raise ValueError(f"output dir {out_dir} {rel} the input dir {hf_dir}; choose an --out outside it")
    if not os.path.lexists(out_dir):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
    if os.path.isdir(out_dir) and not os.path.islink(out_dir) and (not os.listdir(out_dir) or _is_conversion(out_dir)):
        return
    raise ValueError(f"{out_dir} exists and is not a moe_jax conversion (no {orbax_io.META_FILE} with format "
                     f"{orbax_io.FORMAT!r}); --overwrite only replaces a directory moe_jax wrote. "
                     "Remove it yourself or choose another --out")


def is_intact(out_dir: str) -> bool:
    """``out_dir`` is a complete conversion whose recorded files all have their size and sha256
    (``digest``); a damaged one is logged, naming its files."""
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
    return path.startswith(parent.rstrip(os.sep) + os.sep)


def _is_conversion(path: str) -> bool:
    try:
        with open(os.path.join(path, orbax_io.META_FILE)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == orbax_io.FORMAT


def remove_stale_temps(out_dir: str) -> list[str]:
    """Removes the temp dirs ``.{base}.tmp-XXXXXXXX`` (mkdtemp's naming) that a killed conversion to
    ``out_dir`` left beside it, and ``.{base}.old-XXXXXXXX`` (a replaced conversion, killed before it
    was removed); returns their paths."""
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

