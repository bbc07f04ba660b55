from setuptools import find_packages, setup

setup(
    name="moe_jax",
    version="0.1.0",
    description="Multilingual routing analysis of Mixture-of-Experts LLMs in JAX/Flax.",
    python_requires=">=3.11",
    packages=find_packages(include=["moe_jax", "moe_jax.*"]),
    package_data={"moe_jax": ["data/corpus/*", "data/corpus/**/*", "eval/data/*", "eval/data/**/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.10.2",
        "ml_dtypes>=0.4",
        "optax>=0.2",  # learned steering
        "flax>=0.12.8",
        "numpy>=1.26",
        "scipy>=1.11",
        "safetensors>=0.4",
        "orbax-checkpoint>=0.12",
        "transformers>=4.57",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "absl-py>=2.0",
        "ml-collections>=1.0",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "jinja2>=3.1",  # chat templates (transformers needs it, does not require it)
        "lm-eval>=0.4.13,<0.5",  # its core installs and imports without torch from 0.4.13
    ],
    extras_require={
        # torch 2.13.0 exactly: the CPU wheel of that version is local on dev/CI machines;
        # any other spec pulls GBs of CUDA packages.
        # accelerate: lm-eval's HF backend; nbclient + ipykernel: tests/test_notebooks.py runs the notebooks
        # gcsfs + gcp-storage-emulator: tests of gs:// paths against a local GCS emulator (tests/gcs_emulator.py)
        "test": ["torch==2.13.0", "pytest>=8", "pytest-xdist>=3.5", "accelerate", "nbclient>=0.10", "ipykernel>=6",
                 "tokamax==0.0.12",  # pure-Python wheels beside jax 0.10 on CPU: the tokamax backend's tests run
                 "gcsfs>=2026.9", "gcp-storage-emulator>=2026.7"],
        "gcs": ["gcsfs>=2026.9"],  # gs:// workdirs, checkpoints and stores (etils.epath's gs:// backend)
        "gpu": ["tokamax"],
        "tpu": ["tokamax"],
    },
)
