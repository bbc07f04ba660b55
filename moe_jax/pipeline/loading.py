"""The converted checkpoint as the stages that read it (collect, eval, steer) open it, in one place:
``workdir/checkpoint`` is present and is the one ``config.model`` describes (``converted_identity``),
its metadata and model config, its tokenizer; and the same checks for preflights, which read no
weights (``checkpoint_problems``, ``preflight_model``, ``recorded_model_differences``).

Below the stages (they import it; it imports no stage module).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from moe_jax import distributed
from moe_jax.artifacts import layout as wd
from moe_jax.convert import orbax_io, tiny
from moe_jax.convert.safetensors_io import scan_checkpoint
from moe_jax.convert.tokenizer import load_tokenizer, missing_tokenizer
from moe_jax.data import tokenize as tok_lib
from moe_jax.errors import StageError
from moe_jax.io import storage
from moe_jax.io.storage import read_json
from moe_jax.models.config import ModelConfig
from moe_jax.pipeline.common import collect_problems, source_identity
from moe_jax.pipeline import model_identity


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """``workdir/checkpoint``, checked against ``config.model``: its directory, ``moe_jax.json`` and model config."""

    dir: str
    meta: dict[str, Any]
    cfg: ModelConfig


def open_checkpoint(config: Any, workdir: str) -> Checkpoint:
    """The converted checkpoint a stage reads: present (else run the convert stage), converted from the
    source ``config.model`` describes (``converted_identity``: checked by process 0 alone, as the
    source directory may be on its host only), with its metadata and model config. Loads no weights."""
    ckpt_dir = wd.checkpoint_dir(workdir)
    if not storage.exists(storage.join(ckpt_dir, orbax_io.META_FILE)):
        raise FileNotFoundError(f"no converted checkpoint at {ckpt_dir}; run the 'convert' stage first")
    distributed.run_on_writer(lambda: converted_identity(config, workdir), f"checking the checkpoint in {ckpt_dir}")
    meta = orbax_io.read_meta(ckpt_dir)
    return Checkpoint(ckpt_dir, meta, ModelConfig.from_dict(meta["config"]))


def checkpoint_tokenizer(ckpt: Checkpoint, *, checked: bool = False) -> Any:
    """The tokenizer saved with the checkpoint. ``checked``: its files must be there (else transformers
    substitutes another tokenizer or fails elsewhere) and its ids must fit the model's vocabulary."""
    if checked:
        no_tokenizer = missing_tokenizer(ckpt.dir)
        if no_tokenizer:
            raise FileNotFoundError(f"{no_tokenizer}: the convert stage copies them from the model's directory")
    tokenizer = load_tokenizer(ckpt.dir)
    if checked:
        tok_lib.check_tokenizer(tokenizer, ckpt.cfg.vocab_size)
    return tokenizer


def converted_identity(config: Any, workdir: str) -> dict[str, Any]:
    """What ``workdir/checkpoint`` was converted from; refuses a checkpoint of another source than
    ``config.model`` describes (the convert stage was not rerun after the config changed), and for
    source "hf_dir" one whose weights were replaced since (rescan: headers and sampled bytes). For
    "hub" (revision) and "tiny_random" (seed, spec) the source identity already pins the weights."""
    stamp = read_json(wd.convert_stamp(workdir))
    if stamp is None:
        raise StageError(f"{wd.checkpoint_dir(workdir)} has no record of its source ({wd.CONVERT_STAMP}); "
                         "run the 'convert' stage")
    if stamp.get("source") != source_identity(config.model) or stamp.get("dtype") != config.model.dtype:
        raise StageError(f"{wd.checkpoint_dir(workdir)} was converted from {stamp.get('source')} "
                         f"({stamp.get('dtype')}), but config.model describes {source_identity(config.model)} "
                         f"({config.model.dtype}); run the 'convert' stage again")
    if config.model.source == "hf_dir":
        now = scan_checkpoint(config.model.hf_dir).sha256
        if now != stamp.get("checkpoint_sha256"):
            raise StageError(f"the weights in {config.model.hf_dir} changed since {wd.checkpoint_dir(workdir)} was "
                             f"converted from them (checkpoint sha256 {stamp.get('checkpoint_sha256')} -> {now}); "
                             "run the 'convert' stage again")
    return stamp


# -- preflight: the same checks without reading weights ------------------------------------------------

def checkpoint_problems(config: Any, workdir: str) -> list[str]:
    """For a stage that reads ``workdir/checkpoint`` when the convert stage does not run before it:
    the checkpoint exists, is the one ``config.model`` describes, and has its tokenizer."""
    ckpt = wd.checkpoint_dir(workdir)
    if not storage.exists(storage.join(ckpt, "moe_jax.json")):
        return [f"no converted checkpoint at {ckpt}; run the 'convert' stage first (--stages=convert,...)"]
    return collect_problems([lambda: converted_identity(config, workdir), lambda: missing_tokenizer(ckpt)])


def preflight_model(config: Any, workdir: str, before: frozenset[str]) -> ModelConfig | None:
    """The ``ModelConfig`` a stage will load, known without loading weights: the converted
    checkpoint's (when convert does not run first), a tiny random model's from its settings; else None."""
    if "convert" not in before:
        try:
            return ModelConfig.from_dict(orbax_io.read_meta(wd.checkpoint_dir(workdir))["config"])
        except (orbax_io.CheckpointError, KeyError, TypeError, ValueError):
            return None  # no (readable) checkpoint: checkpoint_problems says so
    if config.model.source == "tiny_random":
        t = config.model.tiny
        return ModelConfig.from_hf(tiny.tiny_hf_config(t.model_type, **dict(t.overrides)))
    return None


def recorded_model_differences(recorded: Any, config: Any) -> list[str]:
    """How the model an existing output records differs from ``config.model``: source and dtype
    (``model_identity.model_differences``) and, for a local source, the weights' sha256. [] = the same."""
    if not isinstance(recorded, dict):
        return []
    diffs = model_identity.model_differences(recorded, config.model)
    if not diffs and config.model.source == "hf_dir" and recorded.get("checkpoint_sha256") \
            and config.model.hf_dir and storage.isdir(config.model.hf_dir):
        now = scan_checkpoint(config.model.hf_dir).sha256
        diffs += model_identity.differences(recorded["checkpoint_sha256"], now, f"sha256 of {config.model.hf_dir}")
    return diffs
