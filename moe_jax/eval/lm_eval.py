"""lm-eval's command line with the ``moe_jax`` model registered::

    python -m moe_jax.eval.lm_eval --model moe_jax --model_args pretrained=DIR,batch_size=8 \\
        --tasks belebele_eng_Latn --output_path out/ --log_samples
"""

from __future__ import annotations

import sys

from lm_eval.__main__ import cli_evaluate

import moe_jax.eval  # noqa: F401  registers "moe_jax"


def main(argv: list[str] | None = None) -> None:
    """Runs lm-eval's CLI on ``argv`` (default ``sys.argv[1:]``)."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]  # lm-eval's parser reads sys.argv
    cli_evaluate()


if __name__ == "__main__":
    main()
