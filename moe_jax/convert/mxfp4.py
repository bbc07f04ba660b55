"""MXFP4 expert weights (GPT-OSS releases) dequantised on the host, one tensor at a time.

A packed weight is a pair of uint8 tensors::

    {name}_blocks [E, R, G, 16]   two 4-bit codes per byte, low nibble first: 32 values per row group
    {name}_scales [E, R, G]       shared exponent of each group of 32: value = FP4[code] * 2^(scale - 127)

with ``FP4 = {0, .5, 1, 1.5, 2, 3, 4, 6}`` and the sign in the code's high bit. Row ``r`` holds the
``G * 32`` input values of output ``r``; the dequantised weight is returned transposed, ``[E, G*32, R]``
(GPT-OSS's ``gate_up_proj [E, H, 2I]`` / ``down_proj [E, I, H]``), as transformers'
``convert_moe_packed_tensors`` returns it. Every value is exact in bfloat16 (the default output).
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

from moe_jax.convert.safetensors_io import CheckpointError, TensorInfo, read_tensor

FP4_VALUES = np.array([+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)
GROUP = 32  # values per scale
BLOCK_BYTES = GROUP // 2
BLOCKS, SCALES = "_blocks", "_scales"


def packed_shapes(name: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of ``name``'s blocks and scales for a dequantised weight of shape ``[E, X, R]``."""
    E, X, R = shape
    if X % GROUP:
        raise CheckpointError(f"{name}{BLOCKS}: MXFP4 packs groups of {GROUP} values, but the weight's input "
                              f"dimension is {X}")
    return (E, R, X // GROUP, BLOCK_BYTES), (E, R, X // GROUP)


def dequantize(blocks: np.ndarray, scales: np.ndarray, name: str = "tensor",
               dtype: np.dtype = ml_dtypes.bfloat16) -> np.ndarray:
    """``blocks [E, R, G, 16]`` + ``scales [E, R, G]`` (uint8) -> ``[E, G*32, R]`` in ``dtype``.

    Works one expert at a time: peak memory is the output plus one expert in float32.
    """
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise CheckpointError(f"{name}: MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.ndim != 4 or blocks.shape[-1] != BLOCK_BYTES:
        raise CheckpointError(f"{name}{BLOCKS}: expected shape [experts, rows, groups, {BLOCK_BYTES}], "
                              f"got {list(blocks.shape)}")
    if scales.shape != blocks.shape[:-1]:
        raise CheckpointError(f"{name}{SCALES} has shape {list(scales.shape)}, expected {list(blocks.shape[:-1])} "
                              f"to match {name}{BLOCKS} {list(blocks.shape)}")
    E, R, G, _ = blocks.shape
    out = np.empty((E, G * GROUP, R), dtype)
    for e in range(E):
        vals = np.empty((R, G, GROUP), np.float32)
        vals[..., 0::2] = FP4_VALUES[blocks[e] & 0x0F]
        vals[..., 1::2] = FP4_VALUES[blocks[e] >> 4]
        with np.errstate(over="ignore"):  # scales above 2^127 overflow to inf, as in the reference
            vals = np.ldexp(vals, scales[e].astype(np.int32)[..., None] - 127)  # exact: a power-of-two scale
        out[e] = vals.reshape(R, G * GROUP).T
    return out


class Packed(NamedTuple):
    """A packed weight in a scanned checkpoint: its two stored tensors."""

    blocks: TensorInfo
    scales: TensorInfo

    @property
    def name(self) -> str:
        return self.blocks.name.removesuffix(BLOCKS)

    @property
    def file(self) -> str:
        return self.blocks.file


def read_packed(info: Packed) -> np.ndarray:
    """Reads and dequantises one packed weight (bfloat16, exact)."""
    return dequantize(read_tensor(info.blocks), read_tensor(info.scales), info.name)
