"""moe_jax: multilingual routing analysis of Mixture-of-Experts LLMs in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    """``moe_jax.load`` is ``moe_jax.api.load``, looked up on first use (PEP 562). The package itself
    imports nothing: every ``import moe_jax.<module>`` runs this file first, and dependency-free modules
    (``moe_jax.accelerators`` for ``launch/tpu_vm.py``, ``artifacts.fingerprint``) must not pull in jax."""
    if name == "load":
        return __import__("moe_jax.api", fromlist=["load"]).load  # the api layer (5), only when asked for
    raise AttributeError(f"module 'moe_jax' has no attribute {name!r}")
