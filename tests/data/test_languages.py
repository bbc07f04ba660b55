import pytest

from moe_jax.data import languages as L

METHODS_LANGUAGES = ["eng_Latn", "bam_Latn", "fra_Latn", "tha_Thai", "pes_Arab", "arb_Arab", "arb_Latn",
                     "ary_Arab", "hin_Deva", "zho_Hans", "srp_Cyrl", "lit_Latn", "ory_Orya", "ben_Beng",
                     "asm_Beng"]
ISO_SHORT = {"bn": "ben_Beng", "de": "deu_Latn", "es": "spa_Latn", "fr": "fra_Latn", "ja": "jpn_Jpan",
             "ru": "rus_Cyrl", "sw": "swh_Latn", "te": "tel_Telu", "th": "tha_Thai", "zh": "zho_Hans",
             "en": "eng_Latn", "ar": "arb_Arab", "hi": "hin_Deva", "id": "ind_Latn", "it": "ita_Latn",
             "ko": "kor_Hang", "pt": "por_Latn", "yo": "yor_Latn"}


def test_registry_covers_flores200_belebele_and_methods():
    assert len(L.FLORES200_LANGUAGES) == 204
    assert len(L.BELEBELE_LANGUAGES) == len(set(L.BELEBELE_LANGUAGES)) == 122
    for code in [*METHODS_LANGUAGES, *L.BELEBELE_LANGUAGES, *L.FLORES_PLUS_LANGUAGES, "cmn_Hans"]:
        assert L.validate_language(code) == code
    for code in L.LANGUAGES:  # every code is ISO 639-3 + "_" + a script the registry names
        lang, script = code.split("_")[:2]
        assert len(lang) == 3 and lang.islower() and script in L.SCRIPT_NAMES


@pytest.mark.parametrize("bad, suggestion", [("eng_latn", "eng_Latn"), ("ENG_LATN", "eng_Latn"),
                                              ("zho_hans", "zho_Hans"), ("en", "eng_Latn"),
                                              ("fra_Latn ", "fra_Latn"), ("eng_Lat", "eng_Latn")])
def test_unknown_language_lists_close_matches(bad, suggestion):
    with pytest.raises(L.UnknownLanguageError) as e:
        L.validate_language(bad)
    msg = str(e.value)
    assert f"unknown language code {bad!r}" in msg and "did you mean:" in msg and suggestion in msg
    assert isinstance(e.value, ValueError)


def test_case_only_typo_suggests_exactly_that_code():
    with pytest.raises(L.UnknownLanguageError, match=r"did you mean: eng_Latn\?$"):
        L.validate_language("eng_latn")


def test_gibberish_explains_the_format():
    with pytest.raises(L.UnknownLanguageError, match="ISO 639-3"):
        L.validate_language("qqqqqqqqqq")


def test_validate_languages_rejects_duplicates():
    with pytest.raises(ValueError, match="listed twice"):
        L.validate_languages(["eng_Latn", "fra_Latn", "eng_Latn"])


@pytest.mark.parametrize("short, code", sorted(ISO_SHORT.items()))
def test_iso639_1_round_trip(short, code):
    assert L.from_iso639_1(short) == code
    assert L.to_iso639_1(code) == short
    assert L.from_iso639_1(short.upper()) == code


def test_iso639_1_errors():
    with pytest.raises(L.UnknownLanguageError, match="unknown ISO 639-1 code 'xq'"):
        L.from_iso639_1("xq")
    with pytest.raises(KeyError, match="ary_Arab"):
        L.to_iso639_1("ary_Arab")  # Moroccan Arabic has no ISO 639-1 code of its own
    assert L.to_iso639_1("cmn_Hans") == "zh"


def test_scripts_and_names():
    assert L.script_code("zho_Hans") == "Hans" and L.script_name("rus_Cyrl") == "Cyrillic"
    assert L.script_name("arb_Latn") == "Latin" and L.script_name("ory_Orya") == "Oriya"
    assert L.language_name("swh_Latn") == "Swahili"
    with pytest.raises(L.UnknownLanguageError, match="'rus_cyrl'; did you mean: rus_Cyrl"):
        L.script_name("rus_cyrl")


def test_flores_plus_relabels():
    assert L.flores_plus_code("zho_Hans") == "cmn_Hans"
    assert L.flores_plus_code("tgl_Latn") == "fil_Latn"
    assert L.flores_plus_code("eng_Latn") == "eng_Latn"
    # each FLORES+ subset is listed once, under the FLORES-200 name where one exists
    assert "zho_Hans" in L.FLORES_PLUS_LANGUAGES and "cmn_Hans" not in L.FLORES_PLUS_LANGUAGES
    assert "twi_Latn" not in L.FLORES_PLUS_LANGUAGES  # two varieties in FLORES+: needs a glottocode
    assert {"twi_Latn_akua1239", "aka_Latn"} <= set(L.FLORES_PLUS_LANGUAGES)


def test_register_language():
    with pytest.raises(ValueError, match="xxx_Yyyy"):
        L.register_language("klingon", "Klingon")
    try:
        L.register_language("tlh_Latn", "Klingon")
        assert L.validate_language("tlh_Latn") == "tlh_Latn"
    finally:
        L.LANGUAGES.pop("tlh_Latn", None)


def test_sort_languages_puts_english_first():
    assert L.sort_languages(["zho_Hans", "eng_Latn", "arb_Arab"]) == ["eng_Latn", "arb_Arab", "zho_Hans"]
    assert L.sort_languages(["zho_Hans", "arb_Arab"]) == ["arb_Arab", "zho_Hans"]
