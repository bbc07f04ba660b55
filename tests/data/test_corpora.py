"""Local corpora (FLORES-layout directory, JSONL), the shipped corpus, alignment and load_corpus."""

import json
import os
import unicodedata

import pytest

from moe_jax.data import corpora
from moe_jax.data.defaults import default_config
from moe_jax.data.languages import UnknownLanguageError, script_code
from moe_jax.data.parallel import AlignmentError, CorpusError, MissingLanguageError, ParallelCorpus, align

EN = ["One cat.", "Two dogs.", "Three birds.", "Four fish."]
FR = ["Un chat.", "Deux chiens.", "Trois oiseaux.", "Quatre poissons."]
DE = ["Eine Katze.", "Zwei Hunde.", "Drei Vögel.", "Vier Fische."]


def write(path, lines, ending="\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(ending.join(lines) + ending)


# ------------------------------------------------------------------------------------- shipped corpus

# Unicode-name prefixes of the letters each script of the shipped corpus is written in.
SCRIPT_LETTERS = {"Latn": ("LATIN",), "Cyrl": ("CYRILLIC",), "Arab": ("ARABIC",), "Deva": ("DEVANAGARI",),
                  "Beng": ("BENGALI",), "Hans": ("CJK UNIFIED",), "Thai": ("THAI",),
                  "Jpan": ("CJK UNIFIED", "HIRAGANA", "KATAKANA")}


def _letters(text):
    return [unicodedata.name(ch, "") for ch in text if unicodedata.category(ch)[0] in "LM"]


@pytest.fixture(scope="module")
def builtin():
    return corpora.load_builtin()


def test_builtin_corpus_size_and_scripts(builtin):
    assert len(builtin.languages) >= 12 and len(builtin) >= 40
    assert len({script_code(lang) for lang in builtin.languages}) >= 6
    assert builtin.languages[0] == "eng_Latn" and builtin.dropped_ids == []
    assert all(n == 0 for n in builtin.skipped_empty.values())
    for lang in builtin.languages:
        texts = builtin.texts[lang]
        assert len(texts) == len(builtin.ids) and all(t and t == t.strip() for t in texts)
        assert len(set(texts)) == len(texts), f"{lang}: repeated sentence"


def test_builtin_file_read_independently(builtin):
    with open(corpora.BUILTIN_PATH, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert [r["id"] for r in rows] == builtin.ids
    for lang in builtin.languages:
        assert [r[lang] for r in rows] == builtin.texts[lang]
        assert all(r[lang].strip() for r in rows)


def test_builtin_texts_are_in_their_declared_script(builtin):
    """Catches a translation pasted into the wrong column."""
    for lang in builtin.languages:
        prefixes = SCRIPT_LETTERS[script_code(lang)]
        for sid, text in zip(builtin.ids, builtin.texts[lang]):
            names = _letters(text)
            share = sum(n.startswith(prefixes) for n in names) / len(names)
            assert share >= 0.9, (lang, sid, text)
    kana = lambda t: any(n.startswith(("HIRAGANA", "KATAKANA")) for n in _letters(t))  # noqa: E731
    assert all(kana(t) for t in builtin.texts["jpn_Jpan"])
    assert not any(kana(t) for t in builtin.texts["zho_Hans"])


def test_builtin_numbers_agree_across_languages(builtin):
    """A sentence with a number carries the same number in every language (native digits allowed)."""
    def numbers(text):
        digits = "".join(str(unicodedata.digit(ch)) if unicodedata.category(ch) == "Nd" else " " for ch in text)
        return digits.split()
    for i, sid in enumerate(builtin.ids):
        expected = numbers(builtin.texts["eng_Latn"][i])
        for lang in builtin.languages:
            assert numbers(builtin.texts[lang][i]) == expected, (sid, lang)
    assert any(numbers(t) == ["1896"] for t in builtin.texts["ben_Beng"])  # written ১৮৯৬


# ------------------------------------------------------------------------------------------ alignment

def test_align_orders_by_first_language_and_drops_empty_everywhere():
    records = {"eng_Latn": [("a", "A "), ("b", ""), ("c", "C"), ("d", "D")],
               "fra_Latn": [("d", "d"), ("c", "   "), ("b", "b"), ("a", "a")]}
    c = align("t", "dev", records)
    assert c.ids == ["a", "d"]
    assert c.texts == {"eng_Latn": ["A", "D"], "fra_Latn": ["a", "d"]}
    assert c.skipped_empty == {"eng_Latn": 1, "fra_Latn": 1} and c.dropped_ids == ["b", "c"]


def test_align_names_languages_and_first_differing_id():
    records = {"eng_Latn": [("1", "a"), ("2", "b"), ("3", "c")], "fra_Latn": [("1", "a"), ("3", "c")]}
    with pytest.raises(AlignmentError, match=r"eng_Latn and fra_Latn.*3 sentences.*has 2.*id '2' is in eng_Latn "
                                             r"but not in fra_Latn"):
        align("t", None, records)
    records = {"eng_Latn": [("1", "a")], "fra_Latn": [("1", "a"), ("9", "z")]}
    with pytest.raises(AlignmentError, match="id '9' is in fra_Latn but not in eng_Latn"):
        align("t", None, records)


def test_align_duplicate_id_and_all_empty():
    with pytest.raises(CorpusError, match="'1' appears twice in eng_Latn"):
        align("t", None, {"eng_Latn": [("1", "a"), ("1", "b")]})
    with pytest.raises(CorpusError, match="no sentence left"):
        align("t", None, {"eng_Latn": [("1", "")]})


def test_corpus_select():
    c = align("t", None, {"eng_Latn": [("1", "a"), ("2", "b")], "fra_Latn": [("1", "x"), ("2", "y")]})
    s = c.select(["fra_Latn"], max_sentences=1)
    assert s.languages == ["fra_Latn"] and s.ids == ["1"] and s.texts == {"fra_Latn": ["x"]}
    assert c.select() == c
    with pytest.raises(MissingLanguageError, match="deu_Latn"):
        c.select(["deu_Latn"])
    with pytest.raises(ValueError, match="positive integer"):
        c.select(max_sentences=0)
    with pytest.raises(AlignmentError, match="bad: eng_Latn has 1 texts for 2 ids"):
        ParallelCorpus("bad", None, ["eng_Latn"], ["1", "2"], {"eng_Latn": ["only one"]})


# -------------------------------------------------------------------------------------- FLORES layout

@pytest.mark.parametrize("layout", ["{split}/{lang}.{split}", "{split}/{split}.{lang}", "{split}/{lang}.txt",
                                    "{split}/{lang}", "{lang}.{split}", "{split}.{lang}", "{lang}.txt", "{lang}"])
def test_flores_dir_layouts(tmp_path, layout):
    for lang, lines in (("eng_Latn", EN), ("fra_Latn", FR)):
        write(str(tmp_path / layout.format(lang=lang, split="dev")), lines)
    c = corpora.load_flores_dir(str(tmp_path), ["fra_Latn", "eng_Latn"], split="dev")
    assert c.languages == ["fra_Latn", "eng_Latn"] and c.ids == ["1", "2", "3", "4"]
    assert c.texts == {"eng_Latn": EN, "fra_Latn": FR} and c.split == "dev"
    found = corpora.load_flores_dir(str(tmp_path), None, split="dev")  # discovery, English first
    assert found.languages == ["eng_Latn", "fra_Latn"] and found.texts["fra_Latn"] == FR


def test_flores_dir_case_insensitive_names_and_crlf(tmp_path):
    write(str(tmp_path / "devtest" / "eng_latn.devtest"), EN, ending="\r\n")
    write(str(tmp_path / "devtest" / "DEU_LATN.devtest"), DE)
    c = corpora.load_flores_dir(str(tmp_path), "eng_Latn,deu_Latn", split="devtest")
    assert c.texts == {"eng_Latn": EN, "deu_Latn": DE}


def test_flores_dir_without_split_reads_plain_names_only(tmp_path):
    write(str(tmp_path / "dev" / "eng_Latn.dev"), EN)
    with pytest.raises(CorpusError, match="no language files"):
        corpora.load_flores_dir(str(tmp_path))
    with pytest.raises(MissingLanguageError, match=r"no file for language eng_Latn.*tried:.*eng_Latn\.txt"):
        corpora.load_flores_dir(str(tmp_path), ["eng_Latn"])


def test_flores_dir_count_mismatch(tmp_path):
    write(str(tmp_path / "eng_Latn.txt"), EN)
    write(str(tmp_path / "fra_Latn.txt"), FR[:3])
    with pytest.raises(AlignmentError) as e:
        corpora.load_flores_dir(str(tmp_path), ["eng_Latn", "fra_Latn"])
    msg = str(e.value)
    assert "eng_Latn and fra_Latn" in msg and "4 sentences" in msg and "has 3" in msg and "'4'" in msg
    assert str(tmp_path / "fra_Latn.txt") in msg


def test_flores_dir_empty_lines_skipped_in_all_languages(tmp_path):
    write(str(tmp_path / "eng_Latn.txt"), ["One.", "", "Three.", "Four."])
    write(str(tmp_path / "fra_Latn.txt"), ["Un.", "Deux.", " ", "Quatre."])
    (tmp_path / "deu_Latn.txt").write_text("Eins.\nZwei.\nDrei.\nVier.\n\n \n", encoding="utf-8")  # blank tail
    c = corpora.load_flores_dir(str(tmp_path), ["eng_Latn", "fra_Latn", "deu_Latn"])
    assert c.ids == ["1", "4"] and c.dropped_ids == ["2", "3"]
    assert c.texts == {"eng_Latn": ["One.", "Four."], "fra_Latn": ["Un.", "Quatre."],
                       "deu_Latn": ["Eins.", "Vier."]}
    assert c.skipped_empty == {"eng_Latn": 1, "fra_Latn": 1, "deu_Latn": 0}


def test_flores_dir_missing_language_lists_what_is_there(tmp_path):
    write(str(tmp_path / "eng_Latn.txt"), EN)
    with pytest.raises(MissingLanguageError, match=r"no file for language tha_Thai.*found there: \['eng_Latn'\]"):
        corpora.load_flores_dir(str(tmp_path), ["eng_Latn", "tha_Thai"])
    with pytest.raises(UnknownLanguageError, match="did you mean: tha_Thai"):
        corpora.load_flores_dir(str(tmp_path), ["tha_thai"])
    with pytest.raises(CorpusError, match="does not exist"):
        corpora.load_flores_dir(str(tmp_path / "nope"), ["eng_Latn"])


def test_flores_dir_rejects_non_utf8(tmp_path):
    (tmp_path / "eng_Latn.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(CorpusError, match="eng_Latn.txt is not UTF-8"):
        corpora.load_flores_dir(str(tmp_path), ["eng_Latn"])


# ---------------------------------------------------------------------------------------------- JSONL

def write_jsonl(path, objs, extra_lines=()):
    with open(path, "w", encoding="utf-8") as f:
        for o in objs:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return str(path)


def test_jsonl_long_and_wide_layouts(tmp_path):
    long = [{"id": i + 1, "lang": lang, "text": t} for lang, texts in (("fra_Latn", FR), ("eng_Latn", EN))
            for i, t in enumerate(texts)]
    a = corpora.load_jsonl(write_jsonl(tmp_path / "long.jsonl", long), ["eng_Latn", "fra_Latn"])
    assert a.ids == ["1", "2", "3", "4"] and a.texts == {"eng_Latn": EN, "fra_Latn": FR}
    wide = [{"id": f"s{i}", "eng_Latn": e, "fra_Latn": f, "topic": "animals"} for i, (e, f) in enumerate(zip(EN, FR))]
    b = corpora.load_jsonl(write_jsonl(tmp_path / "wide.jsonl", wide, extra_lines=["", "  "]))
    assert b.languages == ["eng_Latn", "fra_Latn"] and b.texts == {"eng_Latn": EN, "fra_Latn": FR}
    assert b.ids == ["s0", "s1", "s2", "s3"]


def test_jsonl_directory_and_split_filter(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    write_jsonl(d / "a.jsonl", [{"id": 1, "lang": "eng_Latn", "text": "dev one", "split": "dev"},
                                {"id": 1, "lang": "eng_Latn", "text": "test one", "split": "test"}])
    write_jsonl(d / "b.jsonl", [{"id": 1, "eng_Latn": "ignored", "lang": "fra_Latn", "text": "un dev",
                                 "split": "dev"}])
    c = corpora.load_jsonl(str(d), split="dev")
    assert c.texts == {"eng_Latn": ["dev one"], "fra_Latn": ["un dev"]}
    with pytest.raises(CorpusError, match=r"no line with split 'train'; splits present: \['dev', 'test'\]"):
        corpora.load_jsonl(str(d), split="train")
    with pytest.raises(MissingLanguageError, match=r"no text in language fra_Latn for split 'test'"):
        corpora.load_jsonl(str(d), ["eng_Latn", "fra_Latn"], split="test")


@pytest.mark.parametrize("line, error, pattern", [
    ('{"id": 1, "lang": "eng_Latn"', CorpusError, r"bad.jsonl:2: invalid JSON"),
    ('{"lang": "eng_Latn", "text": "x"}', CorpusError, r"bad.jsonl:2: missing key 'id'"),
    ('{"id": 2, "lang": "eng_Latn"}', CorpusError, r"bad.jsonl:2: missing key 'text'"),
    ('{"id": 2, "lang": "eng_latn", "text": "x"}', UnknownLanguageError, r"bad.jsonl:2: .*did you mean: eng_Latn"),
    ('{"id": 2, "eng_Latn": "x", "fra_latn": "y"}', UnknownLanguageError, r"did you mean: fra_Latn"),
    ('{"id": 1, "lang": "eng_Latn", "text": "again"}', CorpusError, r"bad.jsonl:2: .*'1' of eng_Latn already "
                                                                      r"given at .*bad.jsonl:1"),
    ('{"id": 2, "lang": "eng_Latn", "text": null}', CorpusError, r"bad.jsonl:2: text of eng_Latn is NoneType"),
    ('[1, 2]', CorpusError, r"bad.jsonl:2: expected a JSON object"),
    ('{"id": 2, "split": "dev"}', CorpusError, r"bad.jsonl:2: no language column"),
])
def test_jsonl_bad_lines_name_file_and_line(tmp_path, line, error, pattern):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "lang": "eng_Latn", "text": "one"}], extra_lines=[line])
    with pytest.raises(error, match=pattern):
        corpora.load_jsonl(path)


def test_jsonl_misaligned_languages(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "eng_Latn": "a", "fra_Latn": "b"}, {"id": 2, "eng_Latn": "c"}])
    with pytest.raises(AlignmentError, match=r"eng_Latn and fra_Latn.*first differing id '2'"):
        corpora.load_jsonl(path)
    with pytest.raises(CorpusError, match="does not exist"):
        corpora.load_jsonl(str(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------------------------------- load_corpus

def test_load_corpus_builtin_from_default_config():
    cfg = default_config()
    c = corpora.load_corpus(cfg)
    assert c.name == "builtin" and c.split is None and len(c.languages) >= 12
    cfg.languages = ("zho_Hans", "eng_Latn")
    cfg.max_sentences = 5
    c = corpora.load_corpus(cfg)
    assert c.languages == ["zho_Hans", "eng_Latn"] and c.ids == ["s001", "s002", "s003", "s004", "s005"]
    assert c.texts["zho_Hans"][4] == "巴黎是法国的首都。"
    cfg.languages = "tha_Thai,eng_Latn"  # as a command-line override gives it
    assert corpora.load_corpus(cfg).languages == ["tha_Thai", "eng_Latn"]


def test_load_corpus_local_sources(tmp_path):
    write(str(tmp_path / "dev" / "eng_Latn.dev"), EN)
    write(str(tmp_path / "dev" / "deu_Latn.dev"), DE)
    c = corpora.load_corpus({"source": "flores_dir", "path": str(tmp_path), "split": "dev",
                             "languages": "eng_Latn, deu_Latn", "max_sentences": 2})
    assert c.texts == {"eng_Latn": EN[:2], "deu_Latn": DE[:2]}
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": 1, "eng_Latn": "a", "fra_Latn": "b"}])
    assert corpora.load_corpus({"source": "jsonl", "path": path}).texts == {"eng_Latn": ["a"], "fra_Latn": ["b"]}


@pytest.mark.parametrize("cfg, error, pattern", [
    ({"source": "flores"}, ValueError, "source 'flores' is not one of"),
    ({"source": "jsonl"}, ValueError, "path must name the jsonl corpus"),
    ({"source": "builtin", "split": "dev"}, ValueError, "single split"),
    ({"source": "builtin", "languages": ["eng_latn"]}, UnknownLanguageError, r"did you mean: eng_Latn\?"),
    ({"source": "builtin", "languages": ["kor_Hang"]}, MissingLanguageError, "no text in language kor_Hang"),
    ({"source": "builtin", "max_sentences": -3}, ValueError, "positive integer"),
])
def test_load_corpus_bad_config(cfg, error, pattern):
    with pytest.raises(error, match=pattern):
        corpora.load_corpus(cfg)
