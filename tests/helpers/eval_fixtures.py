"""Test helpers for the lm-eval harness: a tiny transformers MoE model with the tiny tokenizer in one
directory, and local lm-eval tasks shaped like Belebele (multiple choice) and MGSM direct
(generate_until with stop strings and the flexible-extract filter)."""

from __future__ import annotations

import json
import os

from tests.helpers.hf_reference import build_hf_model, save_hf_model

from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer
from moe_jax.convert.tiny import tiny_hf_config

PASSAGES = [
    "The river flows north through the old town, past the market and the stone bridge.",
    "Der Zug nach Berlin fährt jeden Morgen um sieben Uhr vom Hauptbahnhof ab.",
    "La biblioteca abre a las nueve y cierra a las ocho de la tarde.",
    "Le marché du samedi vend des fruits, des légumes et du pain frais.",
    "東京の 地下鉄は 朝とても 混雑しています。",
    "Mvua kubwa ilinyesha usiku kucha katika kijiji chetu.",
]


def write_tiny_model(out_dir: str, model_type: str = "qwen3_moe") -> str:
    """A random float32 ``model_type`` model whose vocabulary and EOS are the tiny tokenizer's."""
    tok = build_tiny_tokenizer(out_dir)
    cfg = tiny_hf_config(model_type, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    save_hf_model(build_hf_model(cfg, seed=3), out_dir)
    return out_dir


def _write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def belebele_like_task(data_dir: str, name: str = "tiny_belebele") -> dict:
    """Multiple choice over passages, Belebele's prompt, choices A-D, acc and acc_norm."""
    rows = []
    for i, p in enumerate(PASSAGES):
        words = p.split()
        rows.append(dict(flores_passage=p, question=f" What is word {i + 1} of the passage? ",
                         mc_answer1=words[0], mc_answer2=words[1], mc_answer3=words[-1], mc_answer4="none",
                         correct_answer_num=str(1 + i % 4)))
    path = _write_jsonl(os.path.join(data_dir, f"{name}.jsonl"), rows)
    return {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": path}},
        "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": "P: {{flores_passage}}\nQ: {{question.strip()}}\nA: {{mc_answer1}}\nB: {{mc_answer2}}\n"
                       "C: {{mc_answer3}}\nD: {{mc_answer4}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "{{['1', '2', '3', '4'].index(correct_answer_num)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }


QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", 7),
    ("A class has 12 girls and 15 boys. How many children are there?", 27),
    ("Maria reads 20 pages a day for 5 days. How many pages does she read?", 100),
    ("Un tren recorre 60 km en una hora. ¿Cuántos km recorre en 3 horas?", 180),
    ("Ein Buch kostet 8 Euro. Was kosten 6 Bücher?", 48),
    ("Il y a 45 élèves et 5 classes. Combien d'élèves par classe ?", 9),
    ("小明有15个苹果，吃了3个。还剩几个？", 12),
    ("Juma ana shilingi 500, anatumia 120. Amebaki na shilingi ngapi?", 380),
]


def mgsm_like_task(data_dir: str, until: list[str], name: str = "tiny_mgsm", max_gen_toks: int = 24) -> dict:
    """MGSM direct's prompt, generation kwargs and filters (remove_whitespace; flexible-extract)."""
    rows = [dict(question=q, answer=None, answer_number=a) for q, a in QUESTIONS]
    path = _write_jsonl(os.path.join(data_dir, f"{name}.jsonl"), rows)
    return {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": path}},
        "test_split": "test", "output_type": "generate_until", "target_delimiter": "",
        "doc_to_text": '{% if answer is not none %}{{question+"\\nAnswer:"}}'
                       '{% else %}{{"Question: "+question+"\\nAnswer:"}}{% endif %}',
        "doc_to_target": "{{answer_number|string}}",
        "generation_kwargs": {"until": list(until), "do_sample": False, "temperature": 0.0,
                              "max_gen_toks": max_gen_toks},
        "filter_list": [
            {"name": "remove_whitespace",
             "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]},
            {"name": "flexible-extract",
             "filter": [{"function": "regex", "group_select": -1,
                         "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"}, {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}],
    }
