"""CLI: ``python -m moe_jax.convert --hf_dir=DIR --out=DIR [--dtype=auto|float32|bfloat16|float16] [--overwrite]``.

``--dtype=auto`` (default) keeps the checkpoint's own dtype (config.json's ``torch_dtype``, else the
stored one): converting a float32 checkpoint to bfloat16 loses precision that a float32 load does
not bring back (logits ~1e-2 off the float32 reference).
"""

from __future__ import annotations

from absl import app, flags

from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.convert.safetensors_io import CheckpointError

_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF checkpoint dir (config.json + safetensors).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output dir of the converted checkpoint.", required=True)
_DTYPE = flags.DEFINE_string("dtype", "auto", "Parameter dtype: auto (the checkpoint's own), float32, bfloat16 "
                             "or float16.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out (only once the new one is complete).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        out = convert_checkpoint(_HF_DIR.value, _OUT.value, dtype=_DTYPE.value, overwrite=_OVERWRITE.value)
    except (ValueError, FileExistsError, FileNotFoundError, CheckpointError) as e:
        raise SystemExit(f"moe_jax.convert: error: {e}") from None
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
