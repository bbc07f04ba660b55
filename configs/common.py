"""Shared parts of the pipeline configs in this directory.

Each config file loads this module by its path (a few lines of importlib), so configs work from
any current directory and need no package of their own. Everything else is a default of the
package (``moe_jax.pipeline.registry.default_config``) plus a handful of overrides per file.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

from moe_jax.data.corpora import BUILTIN_TASKS
from moe_jax.pipeline.common import RANDOM_WEIGHTS_WARNING  # noqa: F401 (used by configs)
from moe_jax.pipeline.registry import default_config

# The 15 languages of the multilingual-routing study (Bandarkar et al., arXiv 2510.04694), FLORES codes.
R_LANGUAGES = ("eng_Latn", "bam_Latn", "fra_Latn", "tha_Thai", "pes_Arab", "arb_Arab", "arb_Latn", "ary_Arab",
               "hin_Deva", "zho_Hans", "srp_Cyrl", "lit_Latn", "ory_Orya", "ben_Beng", "asm_Beng")


def builtin_tasks(names: Sequence[str] = BUILTIN_TASKS) -> ml_collections.ConfigDict:
    """``config.tasks`` entries for the shipped English task corpora (moe_jax/data/corpus/tasks)."""
    return ml_collections.ConfigDict({n: {"source": "builtin_task", "task": n} for n in names})


# The evaluation of the studies: MGSM direct in its 11 languages, the Global-MMLU medical subset in
# the 15 languages of Bandarkar et al., Belebele in the routing languages; 0-shot, no chat template.
MGSM_LANGUAGES = ("en", "bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
GMMLU_LANGUAGES = ("en", "ar", "bn", "de", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "sw", "yo", "zh")


def study_eval() -> ml_collections.ConfigDict:
    """``config.eval`` of the studies (hub data; offline: ``eval.data_dirs = {task: dir}``)."""
    from moe_jax.pipeline.eval import default_config as eval_defaults
    e = eval_defaults()
    e.tasks = "mgsm,gmmlu_medical,belebele"
    e.languages = {"mgsm": MGSM_LANGUAGES, "gmmlu_medical": GMMLU_LANGUAGES, "belebele": R_LANGUAGES}
    e.batch_size = 8
    e.max_gen_toks = 256
    return e


def demo_eval() -> ml_collections.ConfigDict:
    """``config.eval`` of the offline demo: the shipped DEMO sets, few new tokens."""
    e = study_eval()
    e.source = "demo"
    # two of the four shipped languages per task keep the demo under 2 minutes on 2 CPU cores
    e.languages = {"mgsm": ("en", "zh"), "gmmlu_medical": ("en", "de"), "belebele": ("eng_Latn", "fra_Latn")}
    e.max_gen_toks = 8
    e.progress = False
    return e


def study_steer(band: str = "auto", tau: float = 0.3, methods: str = "soft,hard") -> ml_collections.ConfigDict:
    """``config.steer`` of Bandarkar et al.'s MGSM sweep: math task experts (``config.tasks.math``) against generic
    English, soft steering at lambda 0.5 and hard steering, every control, on MGSM in its 11 languages.

    ``band``: "auto" (the analysis' detected middle band) or "lo-hi" in 0-indexed decoder layers. The
    study reports 1-indexed bands whose inclusiveness it does not state (Qwen3-30B-A3B 8-35,
    Phi-3.5-MoE 8-17, GPT-OSS-20B 4-19; tau 0.4, 0.3, 0.3), from a secondary summary of the paper:
    starting points to compare against the detected band, not confirmed settings.
    """
    from moe_jax.pipeline.steer import default_config as steer_defaults
    s = steer_defaults()
    s.task = "math"
    s.tasks = "mgsm"
    s.languages = ",".join(MGSM_LANGUAGES)
    s.methods = methods
    s.lambdas = (0.5,)
    s.taus = (tau,)
    s.bands = band
    s.controls = "random,early,late,language"
    return s


def hub_model_config(hub_id: str, *, batch_size: int = 16, model_axis: int = 1, dataset: str = "belebele",
                     tasks: Sequence[str] = BUILTIN_TASKS, **data_overrides) -> ml_collections.ConfigDict:
    """A released checkpoint from the hub, bf16, on the 15 languages of Bandarkar et al.

    ``model_axis``: devices per model replica (experts / heads / MLP split over them); -1 puts the
    whole mesh on the model axis (one replica, for checkpoints that fill several GPUs).
    ``dataset``: "belebele" (FLORES passages as in Belebele, test split; what Bandarkar et al. used) or
    "flores_plus" (gated on the hub; dev split).
    ``tasks``: shipped English task corpora collected for the task experts
    (docs/methods.md#task-and-language-experts): "math"
    (grade-school word problems, GSM8K style) and "medicine" (medical questions and instructions),
    48 prompts each, written for moe_jax. The studies used GSM8K-style math and medical
    instructions; these small sets give a first look. For full-size task data replace an entry,
    e.g. ``c.tasks.math = {"source": "jsonl", "path": "/data/gsm8k_eng.jsonl"}``; () = none.
    """
    c = default_config()
    c.model.source = "hub"
    c.model.hub_id = hub_id
    c.model.name = hub_id
    c.model.dtype = "bfloat16"  # as the studies ran them ("auto": the checkpoint's own, from its config.json)
    c.data.source = dataset
    c.data.languages = R_LANGUAGES
    c.data.split = {"belebele": "test", "flores_plus": "dev"}[dataset]
    c.data.max_length = 512  # Belebele passages in a chat template stay well below this
    for k, v in data_overrides.items():
        c.data[k] = v
    c.tasks = builtin_tasks(tasks)
    c.eval = study_eval()
    c.steer = study_steer()
    c.collect.batch_size = batch_size
    c.collect.pad_to_multiple = 64
    c.mesh.shape = {"data": 1, "model": -1} if model_axis == -1 else {"data": -1, "model": model_axis}
    return c
