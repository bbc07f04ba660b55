"""Offline demo: a tiny RANDOM qwen2_moe model on the built-in corpus, every stage, CPU, < 2 minutes.

    python -m moe_jax.launch --config=configs/demo.py --workdir=/tmp/moe_jax_demo

The weights are random: the numbers exercise the pipeline and mean nothing. The shipped English
math and medicine task corpora are collected too (task experts), hidden representations and the logit
lens beside routing, and ILLUSTRATIVE per-language
accuracies (placeholders, not measurements) make the correlation section render, so the report
shows every section. The eval stage scores the random model on the shipped DEMO sets (a few invented
items per task in en/de/fr/zh, moe_jax/eval/data/demo; the demo runs two languages per task): its
accuracies are of a random model. The demo Belebele set covers only 4 of the 12 corpus languages, too
few for a correlation, so the correlation keeps the placeholders below.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("moe_jax_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

# PLACEHOLDER accuracies for the 12 languages of the built-in corpus: plausible values in the order of
# resource level, invented so that the correlation section renders. They are not measurements of any
# model. Real runs take per-language accuracies from an evaluation (a dict, or a CSV / JSON file:
# moe_jax.analysis.accuracy).
ILLUSTRATIVE_ACCURACY = {
    "eng_Latn": 0.82, "fra_Latn": 0.76, "spa_Latn": 0.77, "deu_Latn": 0.75, "rus_Cyrl": 0.71, "zho_Hans": 0.70,
    "jpn_Jpan": 0.66, "arb_Arab": 0.60, "hin_Deva": 0.56, "tha_Thai": 0.53, "ben_Beng": 0.48, "swh_Latn": 0.42,
}


def get_config():
    c = common.default_config()
    c.model.source = "tiny_random"
    c.model.dtype = "float32"  # the tiny random checkpoint's own dtype ("auto" reads the same)
    # GQA, shared expert, 8 experts top-3; 8 layers of which layer 1 is dense, so the curves have 7 MoE layers.
    c.model.tiny.model_type = "qwen2_moe"
    c.model.tiny.overrides = {"num_hidden_layers": 8, "mlp_only_layers": [1]}
    c.model.warning = (common.RANDOM_WEIGHTS_WARNING + " The per-language accuracies of the correlation "
                       "analysis are ILLUSTRATIVE PLACEHOLDERS (configs/demo.py), not measurements; the "
                       "evaluation accuracies are those of a random model on a few DEMO items.")
    c.data.source = "builtin"
    c.tasks = common.builtin_tasks(("math", "medicine"))  # task experts: English math / medicine vs generic English
    c.collect.batch_size = 8
    c.collect.pad_to_multiple = 64  # few length buckets (compiles): the two-turn task chats reach 256 tokens
    c.collect.token_topk = True  # enables the token-consistency analysis
    c.collect.hidden_states = True  # hidden representations beside routing, and the logit lens
    c.mesh.shape = {"data": -1, "model": 1}
    c.analysis.accuracy = dict(ILLUSTRATIVE_ACCURACY)
    c.eval = common.demo_eval()
    # a small steering sweep on the demo Belebele items: baseline, soft, hard, mask, a random control and a
    # learned bias, targets = math task experts (tau 0.1: the random model's Delta stays below 0.4; hard
    # steering forces at most top-k of them per layer)
    c.steer.task = "math"
    c.steer.tasks = "belebele"
    c.steer.languages = "eng_Latn,fra_Latn"
    c.steer.methods = "soft,hard,mask"
    c.steer.taus = (0.1,)
    c.steer.controls = "random"
    c.steer.learned.enabled = True
    c.steer.learned.steps = 5
    c.steer.learned.max_sentences = 6  # per language: the fit's full-batch steps stay a few seconds on CPU
    c.steer.learned.backend = "dense"  # its gradient compiles faster than the grouped scan's at this size
    c.steer.n_boot = 1000
    return c
