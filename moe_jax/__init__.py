"""moe_jax: multilingual routing analysis of Mixture-of-Experts LLMs in JAX/Flax."""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    """``moe_jax.load`` (``moe_jax.api.load``), resolved on first use (PEP 562): importing the package
    stays free of jax, so the CLIs parse their flags (and ``jax.distributed`` can initialise) before
    jax is imported, and light modules (``artifacts.fingerprint``, ``moe_jax.plan``'s table) stay light."""
    if name == "load":
        from moe_jax.api import load  # lazy on purpose: jax and the loaders, only when asked for
        return load
    raise AttributeError(f"module 'moe_jax' has no attribute {name!r}")
