"""The accelerator table, as data and without dependencies: per-device memory and devices per host of
each TPU generation and GPU that ``moe_jax.plan`` plans for, and how Cloud TPU slice names count.

Imported by ``moe_jax.plan`` (the memory plan) and by ``launch/tpu_vm.py`` (hosts of a slice), which
runs on a machine that need not have jax: this module imports nothing.
"""

from __future__ import annotations

import dataclasses

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class AcceleratorKind:
    memory: int  # bytes per device (one JAX device: a TPU chip, megacore on v4/v5p, or a GPU)
    devices_per_host: int
    name_counts: str  # what the N of "<kind>-N" counts: "chips", "cores" (2 per chip), "devices"


# Nominal HBM per chip (Cloud TPU and NVIDIA documentation). v4 and v5p chips are one JAX device
# (megacore) but their slice names count TensorCores.
ACCELERATORS: dict[str, AcceleratorKind] = {
    "v4": AcceleratorKind(32 * GiB, 4, "cores"),
    "v5e": AcceleratorKind(16 * GiB, 8, "chips"),
    "v5p": AcceleratorKind(95 * GiB, 4, "cores"),
    "v6e": AcceleratorKind(32 * GiB, 8, "chips"),
    "H100-80GB": AcceleratorKind(80 * GiB, 8, "devices"),
}
ALIASES = {"v5litepod": "v5e", "h100": "H100-80GB", "h100-80gb": "H100-80GB"}
