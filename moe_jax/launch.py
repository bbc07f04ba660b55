"""Command line: run pipeline stages from an ml_collections config file.

    python -m moe_jax.launch --config=configs/demo.py --workdir=DIR
        [--stages=convert,collect,analyze,report] [--config.collect.batch_size=16 ...]

``--stages`` defaults to ``config.stages``. Every requested stage's inputs are checked before the
first one writes anything (``moe_jax.pipeline.registry.preflight``): the problems are listed, exit status 1.
With ``config.distributed.enabled`` every process runs this same command (with its own
``--config.distributed.process_id``); process 0 writes the outputs.
"""

from __future__ import annotations

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

# importing these does not touch jax's devices: jax.distributed initialises after flag parsing (main)
from moe_jax import distributed, errors
from moe_jax.pipeline import common as pipeline, registry as stages

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage's inputs and outputs: a local path or gs://bucket/prefix.")
_STAGES = flags.DEFINE_list("stages", None, "Comma-separated stages (default: config.stages).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
    """Drops orbax's, gcsfs's and XLA backend probing's chatter below ERROR (dozens of lines per save,
    a warning about OCDBT merges we do not use, a line per gs:// object opened); errors still show, and
    failures raise anyway."""

    NOISY = ("/orbax/", "/jax/_src/xla_bridge.py", "/gcsfs/")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not any(n in record.pathname for n in self.NOISY)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    try:
        names = stages.parse_stages(config.stages if _STAGES.value is None else _STAGES.value)  # --stages= is [], an error
    except errors.StageError as e:
        raise app.UsageError(str(e)) from None
    options = stages.check_config(config)  # every field checked; the run's Options, built once
    distributed.initialize_distributed(options.distributed)
    logging.getLogger("moe_jax").setLevel(logging.INFO)
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    warning = pipeline.model_warning(options.model) if distributed.is_writer() else None
    if warning:
        print(f"WARNING: {warning}", flush=True)
    try:
        stages.run_stages(options, _WORKDIR.value, names)
    except errors.PreflightError as e:  # every problem, each with its fix: a traceback adds nothing
        raise SystemExit(f"ERROR: {e}") from None
    if warning:
        print(f"WARNING (again): {warning}", flush=True)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
