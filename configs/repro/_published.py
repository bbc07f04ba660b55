"""The published experiments as data: every value with its source. Study R: Bandarkar et al.,
arXiv 2510.04694 (task experts, soft / hard steering); study U: arXiv 2601.14050 (shared experts,
proportional steering, masking of language-exclusive experts). Sources:

* PAPER_R2: R's settings as a secondary summary of the paper reports them (unconfirmed);
* SCRIPTS_U: U's public scripts;
* CODE_R: R's authors' public follow-up code (xl_moe_alignment, routing_analysis/);
* OURS: "not stated: our choice".

Each config file of this directory is ``get_config()`` of one entry (``r_config`` / ``u_config``).
"""

from __future__ import annotations

import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("moe_jax_configs_common", os.path.join(_HERE, "..", "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

PAPER_R2 = "R, paper as summarised by a secondary source (unconfirmed)"
SCRIPTS_U = "U, authors' public scripts"
CODE_R = "R, authors' public code"
OURS = "not stated: our choice"

MODEL_CONFIGS = {"qwen3_30b_a3b": "qwen3_30b_a3b.py", "phi35_moe_instruct": "phi35_moe_instruct.py",
                 "gpt_oss_20b": "gpt_oss_20b.py"}

# R's bands are 1-indexed in the paper, inclusiveness not stated: moe_jax bands are inclusive, 0-indexed
# decoder layers, so 8-35 becomes "7-34" (OURS: the conversion). Per (model, eval task):
R = {  # (model, eval task): values
    ("qwen3_30b_a3b", "mgsm"):  # all PAPER_R2; band (8, 35) 1-indexed
        dict(band="7-34", tau=0.4, method="soft", lam=0.5, experts=22),
    ("qwen3_30b_a3b", "gmmlu_medical"):  # band: OURS (the MGSM band; not stated); the rest PAPER_R2
        dict(band="7-34", tau=0.5, method="hard", lam=1.0, experts=23),
    ("phi35_moe_instruct", "mgsm"):  # all PAPER_R2; band (8, 17) 1-indexed
        dict(band="7-16", tau=0.3, method="soft", lam=0.5, experts=12),
    ("phi35_moe_instruct", "gmmlu_medical"):  # band: OURS (the MGSM band); the rest PAPER_R2
        dict(band="7-16", tau=0.25, method="soft", lam=0.5, experts=2),
    ("gpt_oss_20b", "mgsm"):  # all PAPER_R2; band (4, 19) 1-indexed
        dict(band="3-18", tau=0.3, method="hard", lam=1.0, experts=9),
    ("gpt_oss_20b", "gmmlu_medical"):  # band: OURS (the MGSM band); the rest PAPER_R2
        dict(band="3-18", tau=0.3, method="soft", lam=0.5, experts=6),
}
# experts: the number of targets the paper reports (compare with the steer summary's "targets");
# lam of hard steering: forced on (lambda plays no other role there)
R_TASK_DATA = {"mgsm": "math", "gmmlu_medical": "medicine"}  # PAPER_R2: math / medical task experts
R_LANGUAGES = {"mgsm": common.MGSM_LANGUAGES, "gmmlu_medical": common.GMMLU_LANGUAGES}  # PAPER_R2: eval languages


def _model(name: str):
    spec = importlib.util.spec_from_file_location(f"moe_jax_configs_{name}", os.path.join(_HERE, "..", MODEL_CONFIGS[name]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def r_config(model: str, task: str):
    """Study R's run of ``model`` on ``task``: task experts (Delta > tau) steered in the band."""
    v = R[(model, task)]
    c = _model(model)
    s = c.steer
    s.rule = "task"                   # PAPER_R2: task experts against generic English
    s.task = R_TASK_DATA[task]        # PAPER_R2: math / medical task data (shipped sets: OURS, see configs/common.py)
    s.tasks = task                    # PAPER_R2
    s.languages = ",".join(R_LANGUAGES[task])  # PAPER_R2
    s.statistic = "topk_weight"       # CODE_R: its current default, the renormalised top-k weight
    s.pooling = "sequence"            # CODE_R: each sequence's token mean, then the mean over sequences
    s.methods = v["method"]
    s.lambdas = (v["lam"],)
    s.taus = (v["tau"],)
    s.bands = v["band"]
    s.controls = "random,early,late,language"  # PAPER_R2: the controls the paper reports
    return c


# U: Qwen3-30B-A3B (48 layers), MGSM
U_SHARED = {
    "en_zh": dict(languages="eng_Latn,zho_Hans",  # SCRIPTS_U: en dominant, weights are en's share
                  lam=0.022),                      # SCRIPTS_U
    "zh_en": dict(languages="zho_Hans,eng_Latn",  # SCRIPTS_U: zh dominant
                  lam=0.034),                      # SCRIPTS_U
}


def u_common():
    c = _model("qwen3_30b_a3b")
    s = c.steer
    s.tasks = "mgsm"                  # SCRIPTS_U: MGSM
    s.languages = "en,zh"             # OURS: the target languages of the runs
    s.statistic = "topk_freq"         # SCRIPTS_U: activation frequency
    s.pooling = "token"               # SCRIPTS_U: a language's counts over its token total
    s.taus = (0.0,)                   # OURS: unused by the shared / exclusive rules (the share threshold decides)
    s.controls = ""                   # OURS: no controls
    # SCRIPTS_U route MGSM questions of the target languages; moe_jax routes config.data (OURS: the
    # model config's Belebele passages; for the published data give data.source="jsonl", data.path)
    return c


def u_shared_config(run: str):
    """U's proportional steering towards the experts shared by two languages."""
    v = U_SHARED[run]
    c = u_common()
    s = c.steer
    s.rule = "shared"                 # SCRIPTS_U
    s.shared_languages = v["languages"]
    s.shared_top_k = 20               # SCRIPTS_U: per-layer top-K = 20
    s.shared_thr = 0.7                # SCRIPTS_U: share threshold
    s.bands = "10-39"                 # SCRIPTS_U: layers 10-39 inclusive of 48 (0-indexed)
    s.methods = "proportional"        # SCRIPTS_U
    s.lambdas = (v["lam"],)
    s.vector_dtype = "bfloat16"       # SCRIPTS_U: the steering vector held and applied in bf16
    return c


def u_masking_config():
    """U's masking of the target languages' exclusive experts, one layer range at a time."""
    c = u_common()
    s = c.steer
    s.rule = "exclusive"              # SCRIPTS_U
    s.shared_languages = ""           # OURS: the pool is every collected language
    s.exclusive_languages = ""        # OURS: the sweep's non-English languages are the targets
    s.exclusive_combine = "sum"       # SCRIPTS_U: several targets: the sum of their shares
    s.exclusive_top_k = 15            # SCRIPTS_U
    s.exclusive_thr = 0.4             # SCRIPTS_U
    s.bands = "0-4,22-26,43-47"       # SCRIPTS_U: early, middle and late ranges of 48 layers
    s.methods = "mask"                # SCRIPTS_U
    return c
