"""moe_jax: multilingual routing analysis of Mixture-of-Experts LLMs in JAX/Flax."""

__version__ = "0.1.0"


def load(path, dtype="float32", **kwargs):
    """Loads an HF checkpoint dir or a converted moe_jax dir as a callable ``MoeModel``."""
    from moe_jax.api import load as _load
    return _load(path, dtype=dtype, **kwargs)
