"""The ``convert`` stage: ``config.model`` (a tiny random model, a local HF dir or a hub id) ->
a converted checkpoint at ``workdir/checkpoint`` (with its tokenizer). The check every later stage
makes that the checkpoint is the one ``config.model`` describes is ``moe_jax.pipeline.loading``'s
(``converted_identity``).
"""

from __future__ import annotations

import logging
from typing import Any

from huggingface_hub import snapshot_download

from moe_jax import distributed
from moe_jax.artifacts import layout as wd
from moe_jax.convert import tiny
from moe_jax.convert.checkpoint import check_out_dir, convert_checkpoint, is_intact, remove_stale_temps
from moe_jax.convert.safetensors_io import scan_checkpoint
from moe_jax.convert.tokenizer import missing_tokenizer
from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer
from moe_jax.errors import StageError
from moe_jax.io import storage
from moe_jax.io.storage import atomic_write_json, read_json
from moe_jax.pipeline import options as options_lib
from moe_jax.pipeline.common import collect_problems, source_identity
from moe_jax.plan import check_config_fits

log = logging.getLogger(__name__)


def run(config: Any, workdir: str) -> str:
    """Puts a converted checkpoint at ``workdir/checkpoint`` (skipped when it is already there and
    was converted from the same source, weights and dtype). Process 0 converts; others wait.
    First, on every process, the memory plan (``moe_jax.plan``, ``config.plan``): a model that cannot
    fit the devices is refused before anything is downloaded. ``config``: the run's Options
    (``moe_jax.pipeline.options``: ``model.source`` checked there), or a config they are built from."""
    config = options_lib.of(config)
    check_config_fits(config, verbose=distributed.is_writer())
    out = wd.checkpoint_dir(workdir)
    distributed.run_on_writer(lambda: _convert(config, workdir, out), f"converting the checkpoint into {out}")
    return out


def _convert(config: Any, workdir: str, out: str) -> None:
    m = config.model
    hf_dir = resolve_source(config, workdir)
    identity = {"source": source_identity(config.model), "hf_dir": storage.absolute(hf_dir), "dtype": m.dtype,
                "checkpoint_sha256": scan_checkpoint(hf_dir).sha256}
    stamp = wd.convert_stamp(workdir)
    if (storage.exists(storage.join(out, "moe_jax.json")) and read_json(stamp, invalid_ok=True) == identity
            and is_intact(out)):  # every file's sha256 as recorded: a damaged checkpoint is converted again
        log.info("checkpoint %s is up to date (converted from %s)", out, hf_dir)
        remove_stale_temps(out)
        return
    convert_checkpoint(hf_dir, out, dtype=m.dtype, overwrite=True, require_tokenizer=True)
    atomic_write_json(stamp, identity)


def resolve_source(config: Any, workdir: str) -> str:
    """The HF checkpoint directory to convert: given, downloaded, or written (tiny random)."""
    m = config.model
    if m.source == "hf_dir":
        if not m.hf_dir or not storage.isdir(m.hf_dir):
            raise FileNotFoundError(f"model.hf_dir {m.hf_dir!r} is not a directory")
        return m.hf_dir
    if m.source == "hub":
        return download(m.hub_id, m.get("revision"), m.get("cache_dir"))
    return write_tiny(config, wd.tiny_dir(workdir))


def download(hub_id: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """Snapshot of a hub repository's config, tokenizer and safetensors files (cached)."""
    if not hub_id:
        raise StageError("model.source is 'hub' but model.hub_id is empty")
    try:
        return snapshot_download(hub_id, revision=revision or None, cache_dir=cache_dir or None,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja",
                                                 "*.tiktoken"])
    except Exception as e:  # offline, gated, missing: one clear message
        raise RuntimeError(
            f"could not download {hub_id!r} (revision {revision or 'main'}) from the Hugging Face hub: "
            f"{type(e).__name__}: {e}\n"
            "If this machine is offline, download the checkpoint elsewhere and set model.source='hf_dir' "
            "and model.hf_dir=<dir>; if the model is gated, accept its licence on the hub and run "
            "`huggingface-cli login` (or set HF_TOKEN).") from e


def write_tiny(config: Any, out_dir: str) -> str:
    """A random tiny HF checkpoint + tiny tokenizer trained on the builtin corpus (rewritten only if
    ``model.tiny`` changed)."""
    spec = config.model.tiny.to_dict()
    stamp = storage.join(out_dir, "moe_jax_tiny.json")
    if read_json(stamp, invalid_ok=True) == spec:
        return out_dir
    tokenizer = build_tiny_tokenizer(out_dir, vocab_size=int(spec["vocab_size"]))
    # the model's vocabulary is exactly the tokenizer's
    hf_config = tiny.tiny_hf_config(spec["model_type"], **dict(spec.get("overrides", {}), vocab_size=len(tokenizer)))
    tiny.write_random_hf_checkpoint(out_dir, hf_config, seed=int(spec["seed"]),
                                    router_scale=float(spec["router_scale"]))
    atomic_write_json(stamp, spec)
    return out_dir


# -- preflight: cheap checks before any stage writes (moe_jax.pipeline.registry.preflight) ----------------------

def preflight(config: Any, workdir: str, before: frozenset[str] = frozenset()) -> list[str]:
    """The convert stage's problems, found without writing or downloading anything: a local source
    directory without its config, weights or tokenizer files, and a ``workdir/checkpoint`` that
    conversion may not replace (not written by moe_jax)."""
    m = options_lib.of(config).model
    source = m.hf_dir if m.source == "hf_dir" else wd.tiny_dir(workdir)

    def local_source() -> list[str]:
        if not m.hf_dir or not storage.isdir(m.hf_dir):
            return [f"model.hf_dir {m.hf_dir!r} is not a directory; set --config.model.hf_dir to a local HF "
                    "checkpoint (config.json, *.safetensors, tokenizer files)"]
        names = storage.listdir(m.hf_dir)
        problems = [f"{m.hf_dir} has no {what}; it is not a Hugging Face checkpoint directory"
                    for what, present in (("config.json", "config.json" in names),
                                          ("*.safetensors file", any(n.endswith(".safetensors") for n in names)))
                    if not present]
        return problems + [p for p in [missing_tokenizer(m.hf_dir)] if p]

    checks = [local_source] if m.source == "hf_dir" else []
    checks.append(lambda: check_out_dir(storage.absolute(source), storage.absolute(wd.checkpoint_dir(workdir)),
                                        overwrite=True))
    return collect_problems(checks)
