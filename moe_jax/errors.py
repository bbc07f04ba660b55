"""The pipeline's errors, below every layer that raises them (artifacts, libraries, stages, CLIs)."""


class StageError(ValueError):
    """A stage name or stage input is invalid."""


class PreflightError(StageError):
    """The requested stages cannot run: every problem found before anything was written."""


class MeshError(ValueError):
    """The requested mesh, rules, batch or process layout cannot be laid out on the available devices
    (``moe_jax.sharding``, ``moe_jax.distributed``)."""
