"""FLORES+ and Belebele loaders, offline: local files with the hub schema, and a stand-in for the hub."""

import datasets
import pytest

from moe_jax.data import corpora, hub
from moe_jax.data.parallel import AlignmentError, CorpusError, MissingLanguageError

FLORES = {  # (iso_639_3, iso_15924, glottocode) -> texts of ids 1..3
    ("eng", "Latn", "stan1293"): ["The cat sleeps.", "It rains.", "We eat."],
    ("fra", "Latn", "stan1290"): ["Le chat dort.", "Il pleut.", "Nous mangeons."],
    ("cmn", "Hans", "beij1234"): ["猫在睡觉。", "下雨了。", "我们吃饭。"],
}


def flores_rows(table=FLORES, ids=(1, 2, 3)):
    rows = []
    for (iso3, script, glotto), texts in table.items():
        for i, text in zip(ids, texts):
            rows.append({"id": i, "iso_639_3": iso3, "iso_15924": script, "glottocode": glotto, "text": text,
                         "url": f"https://en.wikinews.org/{i}", "domain": "wikinews", "topic": "misc",
                         "has_image": 0, "has_hyperlink": 0, "last_updated": "2.0"})
    return rows


def belebele_rows(lang, passages):
    """passages: [(link, passage, n_questions)] -> question rows in that order."""
    rows = []
    for link, passage, n in passages:
        for q in range(1, n + 1):
            rows.append({"link": link, "question_number": q, "flores_passage": passage, "question": f"Q{q}?",
                         "mc_answer1": "a", "mc_answer2": "b", "mc_answer3": "c", "mc_answer4": "d",
                         "correct_answer_num": "1", "dialect": lang, "ds": "2023-05-03"})
    return rows


ENG_PASSAGES = [("https://x/1", "Passage one.", 2), ("https://x/2", "Passage two.", 1), ("https://x/3", "Three.", 2)]
FRA_PASSAGES = [("https://x/3", "Trois.", 2), ("https://x/1", "Passage un.", 1), ("https://x/2", "Passage deux.", 2)]


# ------------------------------------------------------------------------------------- local data files

@pytest.mark.parametrize("fmt", ["parquet", "json"])
def test_flores_plus_from_local_files(tmp_path, fmt):
    path = str(tmp_path / f"dev.{fmt}")
    ds = datasets.Dataset.from_list(flores_rows())
    ds.to_parquet(path) if fmt == "parquet" else ds.to_json(path)
    cfg = {"source": "flores_plus", "data_files": path, "languages": ["zho_Hans", "eng_Latn"],
           "cache_dir": str(tmp_path / "cache")}
    c = corpora.load_corpus(cfg)
    assert c.name == "flores_plus" and c.split == "dev" and c.languages == ["zho_Hans", "eng_Latn"]
    assert c.ids == ["1", "2", "3"]
    assert c.texts == {"zho_Hans": FLORES["cmn", "Hans", "beij1234"], "eng_Latn": FLORES["eng", "Latn", "stan1293"]}
    every = corpora.load_corpus({**cfg, "languages": None})  # all languages in the file, FLORES-200 names
    assert every.languages == ["eng_Latn", "fra_Latn", "zho_Hans"]


def test_flores_plus_data_files_by_split(tmp_path):
    dev, devtest = str(tmp_path / "dev.parquet"), str(tmp_path / "devtest.parquet")
    datasets.Dataset.from_list(flores_rows()).to_parquet(dev)
    swapped = {k: list(reversed(v)) for k, v in FLORES.items()}
    datasets.Dataset.from_list(flores_rows(swapped)).to_parquet(devtest)
    c = corpora.load_flores_plus(["fra_Latn"], split="devtest", data_files={"dev": dev, "devtest": devtest},
                                 cache_dir=str(tmp_path / "cache"))
    assert c.texts["fra_Latn"] == list(reversed(FLORES["fra", "Latn", "stan1290"])) and c.split == "devtest"
    with pytest.raises(CorpusError, match=r"data_files has splits \['dev', 'devtest'\], not 'test'"):
        corpora.load_flores_plus(["fra_Latn"], split="test", data_files={"dev": dev, "devtest": devtest})


def test_flores_plus_local_errors(tmp_path):
    cache = str(tmp_path / "cache")
    bad_ids = flores_rows()
    bad_ids[-1]["id"] = 7  # last cmn_Hans row
    path = str(tmp_path / "bad.parquet")
    datasets.Dataset.from_list(bad_ids).to_parquet(path)
    with pytest.raises(AlignmentError, match=r"eng_Latn and zho_Hans.*first differing id '3'"):
        corpora.load_flores_plus(["eng_Latn", "zho_Hans"], data_files=path, cache_dir=cache)
    with pytest.raises(MissingLanguageError, match=r"no rows for language tha_Thai; languages present: "
                                                   r"\['eng_Latn', 'cmn_Hans', 'fra_Latn'\]"):
        corpora.load_flores_plus(["tha_Thai"], data_files=path, cache_dir=cache)
    nocol = str(tmp_path / "nocol.parquet")
    datasets.Dataset.from_list([{"id": 1, "sentence": "x"}]).to_parquet(nocol)
    with pytest.raises(CorpusError, match=r"missing column\(s\) \['iso_639_3', 'iso_15924', 'text'\] of the FLORES\+"):
        corpora.load_flores_plus(["eng_Latn"], data_files=nocol, cache_dir=cache)
    with pytest.raises(CorpusError, match="no such file"):
        corpora.load_flores_plus(["eng_Latn"], data_files=str(tmp_path / "absent.parquet"))
    with pytest.raises(CorpusError, match="one kind among"):
        corpora.load_flores_plus(["eng_Latn"], data_files=str(tmp_path / "x.txt"))


def test_flores_plus_two_varieties_under_one_code(tmp_path):
    table = {("twi", "Latn", "akua1239"): ["a1", "a2", "a3"], ("twi", "Latn", "asan1239"): ["s1", "s2", "s3"],
             ("eng", "Latn", "stan1293"): ["e1", "e2", "e3"]}
    path = str(tmp_path / "twi.parquet")
    datasets.Dataset.from_list(flores_rows(table)).to_parquet(path)
    kw = {"data_files": path, "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(CorpusError, match=r"twi_Latn holds several varieties.*name one, e.g. twi_Latn_akua1239"):
        corpora.load_flores_plus(["eng_Latn", "twi_Latn"], **kw)
    c = corpora.load_flores_plus(["eng_Latn", "twi_Latn_asan1239"], **kw)
    assert c.texts["twi_Latn_asan1239"] == ["s1", "s2", "s3"]
    assert corpora.load_flores_plus(["aka_Latn"], **kw).texts["aka_Latn"] == ["s1", "s2", "s3"]  # FLORES-200 name
    assert corpora.load_flores_plus(None, **kw).languages == ["eng_Latn", "aka_Latn", "twi_Latn_akua1239"]


def test_belebele_from_local_files_dedups_and_aligns_by_link(tmp_path):
    path = str(tmp_path / "belebele.jsonl")
    datasets.Dataset.from_list(belebele_rows("eng_Latn", ENG_PASSAGES) + belebele_rows("fra_Latn", FRA_PASSAGES)
                               ).to_json(path)
    c = corpora.load_corpus({"source": "belebele", "data_files": path, "cache_dir": str(tmp_path / "cache")})
    assert c.name == "belebele" and c.split == "test" and c.languages == ["eng_Latn", "fra_Latn"]
    assert c.ids == ["https://x/1", "https://x/2", "https://x/3"]  # 5 question rows -> 3 passages
    assert c.texts == {"eng_Latn": ["Passage one.", "Passage two.", "Three."],
                       "fra_Latn": ["Passage un.", "Passage deux.", "Trois."]}


def test_belebele_link_with_two_passages_keeps_both(tmp_path):
    rows = belebele_rows("eng_Latn", [("L", "First.", 1), ("L", "Second.", 2), ("M", "Third.", 1)])
    c = corpora.load_belebele(None, data_files=_to_json(tmp_path, rows), cache_dir=str(tmp_path / "cache"))
    assert c.ids == ["L", "L#2", "M"] and c.texts["eng_Latn"] == ["First.", "Second.", "Third."]


def _to_json(tmp_path, rows):
    path = str(tmp_path / "rows.json")
    datasets.Dataset.from_list(rows).to_json(path)
    return path


def test_belebele_missing_language_and_columns(tmp_path):
    path = _to_json(tmp_path, belebele_rows("eng_Latn", ENG_PASSAGES))
    with pytest.raises(MissingLanguageError, match=r"no rows for language bam_Latn; languages present: \['eng_Latn'\]"):
        corpora.load_belebele(["eng_Latn", "bam_Latn"], data_files=path, cache_dir=str(tmp_path / "cache"))
    nocol = str(tmp_path / "nocol.json")
    datasets.Dataset.from_list([{"link": "x", "passage": "y"}]).to_json(nocol)
    with pytest.raises(CorpusError, match=r"missing column\(s\) \['flores_passage', 'dialect'\] of the Belebele"):
        corpora.load_belebele(["eng_Latn"], data_files=nocol, cache_dir=str(tmp_path / "cache2"))


# -------------------------------------------------------------------------------- hub path (stand-in)

class FakeHub:
    """Stands in for datasets.load_dataset(hub_id, subset, split=..., token=...)."""

    def __init__(self, subsets, error=None):
        self.subsets, self.error, self.calls = subsets, error, []

    def __call__(self, path, name=None, split=None, token=None, cache_dir=None, **kw):
        self.calls.append((path, name, split, token))
        if self.error is not None:
            raise self.error
        return datasets.Dataset.from_list(self.subsets[name])


def test_flores_plus_hub_path_uses_flores_plus_subsets_and_same_conversion(monkeypatch):
    rows = flores_rows()
    fake = FakeHub({"cmn_Hans": [r for r in rows if r["iso_639_3"] == "cmn"],
                    "eng_Latn": [r for r in rows if r["iso_639_3"] == "eng"]})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    c = corpora.load_corpus({"source": "flores_plus", "languages": "eng_Latn,zho_Hans", "split": "devtest",
                             "hf_token": "hf_abc", "max_sentences": 2})
    assert fake.calls == [(hub.FLORES_PLUS_HUB, "eng_Latn", "devtest", "hf_abc"),
                          (hub.FLORES_PLUS_HUB, "cmn_Hans", "devtest", "hf_abc")]
    assert c.ids == ["1", "2"] and c.texts["zho_Hans"] == FLORES["cmn", "Hans", "beij1234"][:2]


def test_belebele_hub_path(monkeypatch):
    fake = FakeHub({"eng_Latn": belebele_rows("eng_Latn", ENG_PASSAGES),
                    "fra_Latn": belebele_rows("fra_Latn", FRA_PASSAGES)})
    monkeypatch.setattr(datasets, "load_dataset", fake)
    c = corpora.load_belebele(["fra_Latn", "eng_Latn"])
    assert [call[:3] for call in fake.calls] == [(hub.BELEBELE_HUB, "fra_Latn", "test"),
                                                 (hub.BELEBELE_HUB, "eng_Latn", "test")]
    assert c.ids == ["https://x/3", "https://x/1", "https://x/2"]  # order of the first language
    assert c.texts["eng_Latn"] == ["Three.", "Passage one.", "Passage two."]


def test_hub_without_languages_asks_for_every_language_of_the_source(monkeypatch):
    fake = FakeHub({}, error=ConnectionError("Couldn't reach 'facebook/belebele' on the Hub (ConnectError)"))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(hub.HubAccessError, match="the hub cannot be reached"):
        corpora.load_belebele(None)
    assert fake.calls[0][1] == "eng_Latn" and len(hub.default_languages(hub.BELEBELE_HUB)) == 122


def test_gated_dataset_error_says_how_to_log_in(monkeypatch):
    err = datasets.exceptions.DatasetNotFoundError(
        "Dataset 'openlanguagedata/flores_plus' is a gated dataset on the Hub. You must be authenticated to access it.")
    monkeypatch.setattr(datasets, "load_dataset", FakeHub({}, error=err))
    with pytest.raises(hub.HubAccessError) as e:
        corpora.load_flores_plus(["eng_Latn"])
    msg = str(e.value)
    for part in ("subset 'eng_Latn'", "gated", "https://huggingface.co/datasets/openlanguagedata/flores_plus",
                 "accept its terms", "huggingface-cli login", "HF_TOKEN", "config.data.hf_token", "data_files",
                 "DatasetNotFoundError"):
        assert part in msg, part


@pytest.mark.parametrize("error, pattern", [
    (ConnectionError("Couldn't reach 'openlanguagedata/flores_plus' on the Hub (OfflineModeIsEnabled)"),
     r"the hub cannot be reached\. offline: .*data_files"),
    (ValueError("BuilderConfig 'xyz_Latn' not found. Available: ['eng_Latn']"), r"no such subset or split"),
    (RuntimeError("disk full"), r"cannot read openlanguagedata/flores_plus \(subset 'eng_Latn', split 'dev'\)\. "
                                r"offline"),
])
def test_other_hub_errors(monkeypatch, error, pattern):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub({}, error=error))
    with pytest.raises(hub.HubAccessError, match=pattern):
        corpora.load_flores_plus(["eng_Latn"])
