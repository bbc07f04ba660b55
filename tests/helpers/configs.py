"""The configs tests start from: the shipped ones, the demo trimmed to two languages, the steering demo."""

import glob
import importlib.util
import os

from tests.helpers.paths import REPO_ROOT as ROOT

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("common.py"))


def load_config(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def demo_config(**model):
    config = load_config(os.path.join(ROOT, "configs", "demo.py"))
    config.data.languages = "eng_Latn,fra_Latn"
    config.data.max_sentences = 6
    config.collect.progress = False
    for k, v in model.items():
        config.model[k] = v
    return config


def small_config(**model):
    c = demo_config(**model)
    c.tasks = {}  # one store: fast
    return c


# a compact sweep: Belebele, 2 languages x 2 items; soft, hard, mask, the controls, learned (generation under
# steering: tests/steering/test_spec.py)
OVERRIDES = {
    "eval.source": "demo", "eval.tasks": "belebele", "eval.languages": "eng_Latn,fra_Latn", "eval.limit": 2,
    "eval.max_gen_toks": 6, "eval.batch_size": 4, "steer.task": "math", "steer.methods": "soft,hard,mask",
    "steer.lambdas": (0.5,), "steer.taus": (0.1,), "steer.controls": "random,early,late,language",
    "steer.learned.enabled": True, "steer.learned.steps": 2, "steer.n_boot": 300, "steer.probe_sentences": 4,
}


def demo_with(settings):
    """``configs/demo.py`` with dotted overrides ``{"section.field": value}``."""
    c = load_config(os.path.join(ROOT, "configs", "demo.py"))
    for key, value in settings.items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def steer_config():
    """The demo config with the compact sweep ``OVERRIDES``."""
    return demo_with(OVERRIDES)


def eval_config():
    """The demo with the 2-layer tiny model and a few items of Belebele and MGSM (both language namings)."""
    c = load_config(os.path.join(ROOT, "configs", "demo.py"))
    c.model.tiny.overrides = {}  # the default 2-layer tiny model: fast
    c.eval.tasks = "belebele,mgsm"
    c.eval.languages = {"belebele": "en,deu_Latn", "mgsm": "eng_Latn,fr"}  # both namings
    c.eval.limit = 3
    c.eval.max_gen_toks = 4
    return c
