"""HF safetensors checkpoints <-> moe_jax parameter trees.

- ``loader.load_params(path, dtype, shardings)``: HF dir or converted dir -> ``(ModelConfig, params)``.
- ``checkpoint.convert_checkpoint(hf_dir, out_dir, dtype="auto", overwrite)`` / ``python -m moe_jax.convert``;
  ``digest``: the size and sha256 of every file of a conversion, checked on load and by the convert stage.
- ``export.params_to_hf_tensors`` / ``export.write_hf_checkpoint``: params -> HF safetensors.
- ``name_map``: the HF-name table; ``safetensors_io``: validated streaming reads and writes.
"""
