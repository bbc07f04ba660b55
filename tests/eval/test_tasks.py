"""The evaluation task table: lm-eval's own task definitions, languages, local data, MGSM scoring.

MGSM extraction and scoring go through lm-eval's filters and metric (a scripted model gives tricky
responses) and our records; the expected values are written by hand from lm-eval's task definition
(regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, last match; exact match ignoring case and punctuation).
"""

import json
import os

import pytest

from moe_jax.artifacts import eval_records as rec
from moe_jax.eval import tasks as T

# (response, target, extracted by flexible-extract, correct)
MGSM_CASES = [
    ("The answer is 1,000.", 1000, "1,000.", True),  # comma and trailing period are punctuation
    ("It costs $5", 5, "$5", True),  # "$" is in the first group's class, then dropped as punctuation
    ("It fell to -3 degrees", -3, "-3", True),  # second group: a lone digit after "-"
    ("First 12, then 30, finally 42", 42, "42", True),  # several numbers: the last wins
    ("I do not know", 7, "[invalid]", False),  # no number
    ("So 1,000 apples", 100, "1,000", False),  # "1000" != "100"
    ("Total: 18.", 18, "18.", True),
    ("Maybe 3", -3, "3", True),  # ignore_punctuation also drops the minus sign of the target
]


class ScriptedLM:
    """An lm-eval LM answering MGSM items with fixed strings (by question)."""

    def __new__(cls, answers):
        from lm_eval.api.model import LM

        class _LM(LM):
            def loglikelihood(self, requests):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests):
                raise NotImplementedError

            def generate_until(self, requests):
                return [answers[r.args[0].split("Question: ")[1].split("\n")[0]] for r in requests]

        return _LM()


def test_mgsm_extraction_and_scoring_match_lm_eval(tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    spec = T.get_task("mgsm")
    rows = [{"question": f"q{i}", "answer": None, "answer_number": target} for i, (_, target, _, _) in enumerate(MGSM_CASES)]
    path = tmp_path / "en.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lm = ScriptedLM({f"q{i}": resp for i, (resp, *_) in enumerate(MGSM_CASES)})
    results = lm_eval.simple_evaluate(model=lm, tasks=T.task_configs(spec, "en", str(path)), log_samples=True,
                                      task_manager=TaskManager(include_defaults=False), bootstrap_iters=0)
    records = rec.records_from_results(results, task="mgsm", language="eng_Latn", code="en",
                                       lm_eval_tasks=spec.lm_eval_tasks("en"), metric=spec.metric_name,
                                       filter_name=spec.filter_name)
    assert [r["doc_id"] for r in records] == list(range(len(MGSM_CASES)))
    for r, (resp, target, extracted, correct) in zip(records, MGSM_CASES):
        assert (r["response"], r["target"], r["extracted"], r["correct"]) == (resp, str(target), extracted, correct), r
        assert r["prompt_sha256"] == rec.sha256_text(f"Question: q{r['doc_id']}\nAnswer:")
    rec.check_against_lm_eval(records, results, spec.lm_eval_tasks("en"), spec.metric)
    assert rec.score(records)["accuracy"] == 6 / 8


def test_task_table_uses_lm_eval_definitions():
    mgsm = T.task_configs(T.get_task("mgsm"), "de")[0]
    assert mgsm["task"] == "mgsm_direct_de" and mgsm["dataset_path"] == "juletxara/mgsm"
    assert '"Frage: "+question+"\\nAntwort:"' in mgsm["doc_to_text"]
    assert [f["name"] for f in mgsm["filter_list"]] == ["remove_whitespace", "flexible-extract"]
    gm = T.get_task("gmmlu_medical")
    cfgs = T.task_configs(gm, "fr")
    assert [c["task"] for c in cfgs] == [f"global_mmlu_full_fr_{s}" for s in T.MEDICAL_SUBJECTS]
    assert cfgs[0]["process_docs"].keywords == {"subject": "clinical_knowledge"}
    samples = T.samples_for(gm, "fr", None)
    assert all(len(v) == 60 and v == sorted(v) for v in samples.values()) and len(samples) == 7
    assert T.samples_for(gm, "fr", 3)["global_mmlu_full_fr_virology"] == sorted(samples["global_mmlu_full_fr_virology"])[:3]
    local = T.task_configs(T.get_task("belebele"), "deu_Latn", "/data/deu_Latn.parquet")[0]
    assert (local["dataset_path"], local["dataset_kwargs"]) == ("parquet", {"data_files": {"test": "/data/deu_Latn.parquet"}})
    assert local["doc_to_text"].startswith("P: {{flores_passage}}") and local["test_split"] == "test"


def test_languages_both_namings_and_errors():
    mgsm, bele, gm = T.get_task("mgsm"), T.get_task("belebele"), T.get_task("gmmlu_medical")
    assert len(mgsm.codes) == 11
    assert T.resolve_language(mgsm, "de") == T.resolve_language(mgsm, "deu_Latn") == ("deu_Latn", "de")
    assert T.resolve_language(mgsm, "sw") == ("swh_Latn", "sw")
    assert T.resolve_language(bele, "zh") == ("zho_Hans", "zho_Hans")
    assert T.resolve_language(gm, "fil") == ("fil_Latn", "fil")
    with pytest.raises(T.TaskError, match=r"task 'mgsm' has no language 'ko' \(kor_Hang\); its languages: bn \(ben_Beng\), "
                                          r"de \(deu_Latn\)"):
        T.resolve_language(mgsm, "ko")
    with pytest.raises(T.TaskError, match=r"has no language 'deu_latn' .*did you mean: deu_Latn"):
        T.resolve_language(bele, "deu_latn")
    with pytest.raises(T.TaskError, match="listed twice"):
        T.resolve_languages(mgsm, ["de", "deu_Latn"])
    with pytest.raises(T.TaskError, match="unknown evaluation task 'mmlu'; known tasks: mgsm, gmmlu_medical, belebele"):
        T.get_task("mmlu")


def test_local_data_checks(tmp_path):
    spec = T.get_task("mgsm")
    (tmp_path / "de.jsonl").write_text(json.dumps({"question": "q", "answer": None, "answer_number": 1}) + "\n"
                                       + json.dumps({"question": "q", "answer": None}) + "\n")
    path = T.local_file(spec, "de", str(tmp_path))
    with pytest.raises(T.TaskError, match=rf"{path}: row 1 lacks field\(s\) \['answer_number'\] that task 'mgsm' needs"):
        T.check_local_file(spec, path)
    with pytest.raises(T.TaskError, match=r"no local data for language 'fr' in .*fr.jsonl, fr.json or fr.parquet"):
        T.local_file(spec, "fr", str(tmp_path))
    for task, codes in (("mgsm", ["de", "en", "fr", "zh"]), ("gmmlu_medical", ["de", "en", "fr", "zh"]),
                        ("belebele", ["deu_Latn", "eng_Latn", "fra_Latn", "zho_Hans"])):  # the shipped demo sets
        for code in codes:
            n = T.check_local_file(T.get_task(task), T.local_file(T.get_task(task), code, f"{T.DEMO_DIR}/{task}"))
            assert 5 <= n <= 8


def test_wilson_interval_by_hand():
    # k = 0, n = 5: center = (z^2/10) / (1 + z^2/5) = half width, so the interval is [0, 2 * center]
    z2 = 1.959963984540054 ** 2
    lo, hi = rec.wilson_interval(0, 5)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(2 * (z2 / 10) / (1 + z2 / 5), rel=1e-12)
    lo, hi = rec.wilson_interval(2, 5)  # p = 0.4
    c, h = (0.4 + z2 / 10) / (1 + z2 / 5), 1.959963984540054 * (0.24 / 5 + z2 / 100) ** 0.5 / (1 + z2 / 5)
    assert (lo, hi) == pytest.approx((c - h, c + h), rel=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.1176, 0.7693)


def test_records_done_only_when_the_file_is_intact(tmp_path):
    d = str(tmp_path)
    rec.open_records(d, {"model": "m"}, "fp")
    assert not rec.is_done(d, "mgsm", "deu_Latn")  # not in the manifest
    rec.write_records(d, "mgsm", "deu_Latn", [{"doc_id": 0, "correct": True}], {"accuracy": 1.0})
    assert rec.is_done(d, "mgsm", "deu_Latn")
    path = rec.record_path(d, "mgsm", "deu_Latn")
    data = open(path, "rb").read()
    with open(path, "wb") as f:  # same size, one byte changed: only the sha256 tells
        f.write(data.replace(b"true", b"TRUE"))
    assert os.path.getsize(path) == len(data) and not rec.is_done(d, "mgsm", "deu_Latn")
    os.remove(path)
    assert not rec.is_done(d, "mgsm", "deu_Latn")
