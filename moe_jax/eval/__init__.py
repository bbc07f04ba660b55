"""Evaluation with lm-evaluation-harness: importing this package registers the lm-eval model
``"moe_jax"`` (``moe_jax.eval.harness.MoeJaxLM``)."""

from moe_jax.eval import harness  # noqa: F401  registers "moe_jax" with lm-eval
