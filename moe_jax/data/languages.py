"""Language codes: FLORES-200 / FLORES+ codes (``eng_Latn`` = ISO 639-3 + ``_`` + ISO 15924 script).

The registry holds the 204 FLORES-200 codes (the names Belebele also uses), the codes FLORES+ added
or relabelled (``cmn_Hans``, ``fil_Latn``, ``ekk_Latn``, ...; varieties sharing a code carry a
glottocode suffix, ``twi_Latn_akua1239``) and the romanised Belebele variants (``hin_Latn``, ...).
``validate_language`` rejects anything else with the closest matches, because a mistyped code
(``eng_latn``) would otherwise surface much later as an empty or missing file.

Also here: ISO 639-1 short codes used by MGSM / Global-MMLU (``bn``, ``zh``, ...) and script names.
"""

from __future__ import annotations

import difflib
from typing import Iterable

# --- FLORES-200 (NLLB Team 2022): code -> English name ----------------------------------------------
_FLORES200 = """
ace_Arab Acehnese (Arabic script)|ace_Latn Acehnese (Latin script)|acm_Arab Mesopotamian Arabic|
acq_Arab Ta'izzi-Adeni Arabic|aeb_Arab Tunisian Arabic|afr_Latn Afrikaans|ajp_Arab South Levantine Arabic|
aka_Latn Akan|amh_Ethi Amharic|apc_Arab North Levantine Arabic|arb_Arab Modern Standard Arabic|
arb_Latn Modern Standard Arabic (Romanized)|ars_Arab Najdi Arabic|ary_Arab Moroccan Arabic|
arz_Arab Egyptian Arabic|asm_Beng Assamese|ast_Latn Asturian|awa_Deva Awadhi|ayr_Latn Central Aymara|
azb_Arab South Azerbaijani|azj_Latn North Azerbaijani|bak_Cyrl Bashkir|bam_Latn Bambara|ban_Latn Balinese|
bel_Cyrl Belarusian|bem_Latn Bemba|ben_Beng Bengali|bho_Deva Bhojpuri|bjn_Arab Banjar (Arabic script)|
bjn_Latn Banjar (Latin script)|bod_Tibt Standard Tibetan|bos_Latn Bosnian|bug_Latn Buginese|
bul_Cyrl Bulgarian|cat_Latn Catalan|ceb_Latn Cebuano|ces_Latn Czech|cjk_Latn Chokwe|ckb_Arab Central Kurdish|
crh_Latn Crimean Tatar|cym_Latn Welsh|dan_Latn Danish|deu_Latn German|dik_Latn Southwestern Dinka|
dyu_Latn Dyula|dzo_Tibt Dzongkha|ell_Grek Greek|eng_Latn English|epo_Latn Esperanto|est_Latn Estonian|
eus_Latn Basque|ewe_Latn Ewe|fao_Latn Faroese|fij_Latn Fijian|fin_Latn Finnish|fon_Latn Fon|fra_Latn French|
fur_Latn Friulian|fuv_Latn Nigerian Fulfulde|gla_Latn Scottish Gaelic|gle_Latn Irish|glg_Latn Galician|
grn_Latn Guarani|guj_Gujr Gujarati|hat_Latn Haitian Creole|hau_Latn Hausa|heb_Hebr Hebrew|hin_Deva Hindi|
hne_Deva Chhattisgarhi|hrv_Latn Croatian|hun_Latn Hungarian|hye_Armn Armenian|ibo_Latn Igbo|ilo_Latn Ilocano|
ind_Latn Indonesian|isl_Latn Icelandic|ita_Latn Italian|jav_Latn Javanese|jpn_Jpan Japanese|kab_Latn Kabyle|
kac_Latn Jingpho|kam_Latn Kamba|kan_Knda Kannada|kas_Arab Kashmiri (Arabic script)|
kas_Deva Kashmiri (Devanagari script)|kat_Geor Georgian|knc_Arab Central Kanuri (Arabic script)|
knc_Latn Central Kanuri (Latin script)|kaz_Cyrl Kazakh|kbp_Latn Kabiye|kea_Latn Kabuverdianu|khm_Khmr Khmer|
kik_Latn Kikuyu|kin_Latn Kinyarwanda|kir_Cyrl Kyrgyz|kmb_Latn Kimbundu|kmr_Latn Northern Kurdish|
kon_Latn Kikongo|kor_Hang Korean|lao_Laoo Lao|lij_Latn Ligurian|lim_Latn Limburgish|lin_Latn Lingala|
lit_Latn Lithuanian|lmo_Latn Lombard|ltg_Latn Latgalian|ltz_Latn Luxembourgish|lua_Latn Luba-Kasai|
lug_Latn Ganda|luo_Latn Luo|lus_Latn Mizo|lvs_Latn Standard Latvian|mag_Deva Magahi|mai_Deva Maithili|
mal_Mlym Malayalam|mar_Deva Marathi|min_Arab Minangkabau (Arabic script)|min_Latn Minangkabau (Latin script)|
mkd_Cyrl Macedonian|plt_Latn Plateau Malagasy|mlt_Latn Maltese|mni_Beng Meitei (Bengali script)|
khk_Cyrl Halh Mongolian|mos_Latn Mossi|mri_Latn Maori|mya_Mymr Burmese|nld_Latn Dutch|
nno_Latn Norwegian Nynorsk|nob_Latn Norwegian Bokmal|npi_Deva Nepali|nso_Latn Northern Sotho|nus_Latn Nuer|
nya_Latn Nyanja|oci_Latn Occitan|gaz_Latn West Central Oromo|ory_Orya Odia|pag_Latn Pangasinan|
pan_Guru Eastern Panjabi|pap_Latn Papiamento|pes_Arab Western Persian|pol_Latn Polish|por_Latn Portuguese|
prs_Arab Dari|pbt_Arab Southern Pashto|quy_Latn Ayacucho Quechua|ron_Latn Romanian|run_Latn Rundi|
rus_Cyrl Russian|sag_Latn Sango|san_Deva Sanskrit|sat_Olck Santali|scn_Latn Sicilian|shn_Mymr Shan|
sin_Sinh Sinhala|slk_Latn Slovak|slv_Latn Slovenian|smo_Latn Samoan|sna_Latn Shona|snd_Arab Sindhi|
som_Latn Somali|sot_Latn Southern Sotho|spa_Latn Spanish|als_Latn Tosk Albanian|srd_Latn Sardinian|
srp_Cyrl Serbian|ssw_Latn Swati|sun_Latn Sundanese|swe_Latn Swedish|swh_Latn Swahili|szl_Latn Silesian|
tam_Taml Tamil|tat_Cyrl Tatar|tel_Telu Telugu|tgk_Cyrl Tajik|tgl_Latn Tagalog|tha_Thai Thai|tir_Ethi Tigrinya|
taq_Latn Tamasheq (Latin script)|taq_Tfng Tamasheq (Tifinagh script)|tpi_Latn Tok Pisin|tsn_Latn Tswana|
tso_Latn Tsonga|tuk_Latn Turkmen|tum_Latn Tumbuka|tur_Latn Turkish|twi_Latn Twi|
tzm_Tfng Central Atlas Tamazight|uig_Arab Uyghur|ukr_Cyrl Ukrainian|umb_Latn Umbundu|urd_Arab Urdu|
uzn_Latn Northern Uzbek|vec_Latn Venetian|vie_Latn Vietnamese|war_Latn Waray|wol_Latn Wolof|xho_Latn Xhosa|
ydd_Hebr Eastern Yiddish|yor_Latn Yoruba|yue_Hant Yue Chinese|zho_Hans Chinese (Simplified)|
zho_Hant Chinese (Traditional)|zsm_Latn Standard Malay|zul_Latn Zulu
"""

# --- FLORES+ (OLDI) additions and relabels -----------------------------------------------------------
_FLORES_PLUS_EXTRA = """
brx_Deva Bodo|chv_Cyrl Chuvash|cmn_Hans Mandarin Chinese (Standard Beijing)|
cmn_Hant Mandarin Chinese (Taiwanese)|dgo_Deva Dogri|ekk_Latn Estonian|fil_Latn Filipino|gom_Deva Goan Konkani|
gug_Latn Paraguayan Guarani|ktu_Latn Kituba (DRC)|mhr_Cyrl Meadow Mari|mni_Mtei Meitei (Meitei script)|
nqo_Nkoo Nko|snd_Deva Sindhi (Devanagari script)|zgh_Tfng Standard Moroccan Tamazight|
twi_Latn_akua1239 Akuapem Twi|twi_Latn_asan1239 Asante Twi|apc_Arab_nort3139 Levantine Arabic (North)|
apc_Arab_sout3123 Levantine Arabic (South)|kaa_Latn Karakalpak|myv_Cyrl Erzya|tyv_Cyrl Tuvan
"""

# --- Belebele variants that are not FLORES-200 codes (romanised text) --------------------------------
_BELEBELE_EXTRA = """
ben_Latn Bengali (Romanized)|hin_Latn Hindi (Romanized)|npi_Latn Nepali (Romanized)|
sin_Latn Sinhala (Romanized)|urd_Latn Urdu (Romanized)
"""


def _parse(block: str) -> dict[str, str]:
    out = {}
    for item in " ".join(block.split("\n")).split("|"):
        item = item.strip()
        if item:
            code, name = item.split(" ", 1)
            out[code] = name.strip()
    return out


FLORES200_LANGUAGES: dict[str, str] = _parse(_FLORES200)
FLORES_PLUS_EXTRA: dict[str, str] = _parse(_FLORES_PLUS_EXTRA)
LANGUAGES: dict[str, str] = {**FLORES200_LANGUAGES, **FLORES_PLUS_EXTRA, **_parse(_BELEBELE_EXTRA)}

# FLORES+ 2.0 relabelled these FLORES-200 codes (CHANGELOG of openlanguagedata/flores); the hub
# configs use the new names, while Belebele keeps the old ones. Users keep naming the language by
# the FLORES-200 code; the FLORES+ loader asks the hub for the new one.
FLORES_PLUS_RENAMES: dict[str, str] = {
    "zho_Hans": "cmn_Hans", "zho_Hant": "cmn_Hant", "tgl_Latn": "fil_Latn", "est_Latn": "ekk_Latn",
    "grn_Latn": "gug_Latn", "kon_Latn": "ktu_Latn", "tzm_Tfng": "zgh_Tfng",
    "aka_Latn": "twi_Latn_asan1239", "ajp_Arab": "apc_Arab_sout3123",
}

# The 122 Belebele variants (facebook/belebele configs; FLORES-200 codes).
BELEBELE_LANGUAGES: tuple[str, ...] = tuple("""
acm_Arab afr_Latn als_Latn amh_Ethi apc_Arab arb_Arab arb_Latn ars_Arab ary_Arab arz_Arab asm_Beng
azj_Latn bam_Latn ben_Beng ben_Latn bod_Tibt bul_Cyrl cat_Latn ceb_Latn ces_Latn ckb_Arab dan_Latn
deu_Latn ell_Grek eng_Latn est_Latn eus_Latn fin_Latn fra_Latn fuv_Latn gaz_Latn grn_Latn guj_Gujr
hat_Latn hau_Latn heb_Hebr hin_Deva hin_Latn hrv_Latn hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn
isl_Latn ita_Latn jav_Latn jpn_Jpan kac_Latn kan_Knda kat_Geor kaz_Cyrl kea_Latn khk_Cyrl khm_Khmr
kin_Latn kir_Cyrl kor_Hang lao_Laoo lin_Latn lit_Latn lug_Latn luo_Latn lvs_Latn mal_Mlym mar_Deva
mkd_Cyrl mlt_Latn mri_Latn mya_Mymr nld_Latn nob_Latn npi_Deva npi_Latn nso_Latn nya_Latn ory_Orya
pan_Guru pbt_Arab pes_Arab plt_Latn pol_Latn por_Latn ron_Latn rus_Cyrl shn_Mymr sin_Latn sin_Sinh
slk_Latn slv_Latn sna_Latn snd_Arab som_Latn sot_Latn spa_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn
swh_Latn tam_Taml tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi tsn_Latn tso_Latn tur_Latn ukr_Cyrl
urd_Arab urd_Latn uzn_Latn vie_Latn war_Latn wol_Latn xho_Latn yor_Latn zho_Hans zho_Hant zsm_Latn
zul_Latn
""".split())

# FLORES+ hub configs under the names users give (FLORES-200 names where a relabel happened).
FLORES_PLUS_LANGUAGES: tuple[str, ...] = tuple(sorted(
    ({c for c in FLORES200_LANGUAGES if c not in ("twi_Latn", "apc_Arab")} | set(FLORES_PLUS_EXTRA))
    - set(FLORES_PLUS_RENAMES.values())))

# ISO 639-1 codes of MGSM / Global-MMLU (and other common ones) -> FLORES code.
ISO639_1_TO_FLORES: dict[str, str] = {
    "en": "eng_Latn", "bn": "ben_Beng", "de": "deu_Latn", "es": "spa_Latn", "fr": "fra_Latn",
    "ja": "jpn_Jpan", "ru": "rus_Cyrl", "sw": "swh_Latn", "te": "tel_Telu", "th": "tha_Thai",
    "zh": "zho_Hans", "ar": "arb_Arab", "hi": "hin_Deva", "id": "ind_Latn", "it": "ita_Latn",
    "ko": "kor_Hang", "pt": "por_Latn", "yo": "yor_Latn", "am": "amh_Ethi", "cs": "ces_Latn",
    "el": "ell_Grek", "fa": "pes_Arab", "fi": "fin_Latn", "ha": "hau_Latn", "he": "heb_Hebr",
    "ig": "ibo_Latn", "ky": "kir_Cyrl", "lt": "lit_Latn", "mg": "plt_Latn", "ms": "zsm_Latn",
    "ne": "npi_Deva", "nl": "nld_Latn", "ny": "nya_Latn", "pl": "pol_Latn", "ro": "ron_Latn",
    "si": "sin_Sinh", "sn": "sna_Latn", "so": "som_Latn", "sr": "srp_Cyrl", "sv": "swe_Latn",
    "tr": "tur_Latn", "uk": "ukr_Cyrl", "vi": "vie_Latn", "ur": "urd_Arab", "ta": "tam_Taml",
    "mr": "mar_Deva", "gu": "guj_Gujr", "kn": "kan_Knda", "ml": "mal_Mlym", "pa": "pan_Guru",
    "or": "ory_Orya", "as": "asm_Beng", "bg": "bul_Cyrl", "ca": "cat_Latn", "da": "dan_Latn",
    "hu": "hun_Latn", "hr": "hrv_Latn", "sk": "slk_Latn", "sl": "slv_Latn", "uz": "uzn_Latn",
    "kk": "kaz_Cyrl", "ka": "kat_Geor", "hy": "hye_Armn", "km": "khm_Khmr", "lo": "lao_Laoo",
    "my": "mya_Mymr", "tl": "tgl_Latn", "zu": "zul_Latn", "xh": "xho_Latn", "bm": "bam_Latn",
}
FLORES_TO_ISO639_1: dict[str, str] = {v: k for k, v in ISO639_1_TO_FLORES.items()}
FLORES_TO_ISO639_1.update({"cmn_Hans": "zh", "fil_Latn": "tl"})

# ISO 15924 script names of the scripts in the registry.
SCRIPT_NAMES: dict[str, str] = {
    "Arab": "Arabic", "Armn": "Armenian", "Beng": "Bengali", "Cyrl": "Cyrillic", "Deva": "Devanagari",
    "Ethi": "Ethiopic", "Geor": "Georgian", "Grek": "Greek", "Gujr": "Gujarati", "Guru": "Gurmukhi",
    "Hang": "Hangul", "Hans": "Han (Simplified)", "Hant": "Han (Traditional)", "Hebr": "Hebrew",
    "Jpan": "Japanese (Han + Kana)", "Khmr": "Khmer", "Knda": "Kannada", "Laoo": "Lao", "Latn": "Latin",
    "Mlym": "Malayalam", "Mtei": "Meitei Mayek", "Mymr": "Myanmar", "Nkoo": "N'Ko", "Olck": "Ol Chiki",
    "Orya": "Oriya", "Sinh": "Sinhala", "Taml": "Tamil", "Telu": "Telugu", "Tfng": "Tifinagh",
    "Thai": "Thai", "Tibt": "Tibetan",
}


class UnknownLanguageError(ValueError):
    """A language code that is not in the FLORES registry (message lists the close matches)."""


def close_matches(code: str, n: int = 5) -> list[str]:
    """Registry codes closest to ``code``: the code up to case/whitespace alone if there is one,
    else the ISO 639-1 mapping and difflib matches."""
    key = str(code).strip().lower()
    lower_to_code = {c.lower(): c for c in LANGUAGES}
    if key in lower_to_code:
        return [lower_to_code[key]]
    out: list[str] = [ISO639_1_TO_FLORES[key]] if key in ISO639_1_TO_FLORES else []
    for c in difflib.get_close_matches(key, list(lower_to_code), n=n, cutoff=0.6):
        if lower_to_code[c] not in out:
            out.append(lower_to_code[c])
    return out[:n]


def validate_language(code: str) -> str:
    """Returns ``code`` if it is a registry code, else raises ``UnknownLanguageError``."""
    if isinstance(code, str) and code in LANGUAGES:
        return code
    matches = close_matches(str(code))
    hint = (f"did you mean: {', '.join(matches)}?" if matches else
            "FLORES codes are ISO 639-3 + '_' + ISO 15924 script, e.g. eng_Latn, zho_Hans, arb_Arab")
    raise UnknownLanguageError(f"unknown language code {code!r}; {hint}")


def validate_languages(codes: Iterable[str]) -> list[str]:
    """Validates every code and rejects duplicates; returns them as a list in the given order."""
    out = []
    for c in codes:
        validate_language(c)
        if c in out:
            raise ValueError(f"language {c!r} is listed twice")
        out.append(c)
    return out


def register_language(code: str, name: str) -> None:
    """Adds a code (for a corpus in a language the registry lacks); must look like ``xxx_Yyyy``."""
    parts = code.split("_")
    if len(parts) < 2 or len(parts[0]) != 3 or not parts[0].islower() or len(parts[1]) != 4 \
            or not parts[1].istitle():
        raise ValueError(f"{code!r} is not of the form xxx_Yyyy (ISO 639-3 + '_' + ISO 15924)")
    LANGUAGES[code] = name


def language_name(code: str) -> str:
    return LANGUAGES[validate_language(code)]


def script_code(code: str) -> str:
    """ISO 15924 script of a FLORES code: ``script_code("zho_Hans") == "Hans"``."""
    return validate_language(code).split("_")[1]


def script_name(code: str) -> str:
    """Readable script name: ``script_name("rus_Cyrl") == "Cyrillic"``."""
    s = script_code(code)
    return SCRIPT_NAMES.get(s, s)


def to_iso639_1(code: str) -> str:
    """FLORES code -> ISO 639-1 short code (MGSM / Global-MMLU naming); KeyError if it has none."""
    validate_language(code)
    if code not in FLORES_TO_ISO639_1:
        raise KeyError(f"language {code!r} has no ISO 639-1 code in the registry")
    return FLORES_TO_ISO639_1[code]


def from_iso639_1(short: str) -> str:
    """ISO 639-1 short code -> FLORES code: ``from_iso639_1("sw") == "swh_Latn"``."""
    key = str(short).lower()
    if key not in ISO639_1_TO_FLORES:
        matches = difflib.get_close_matches(key, list(ISO639_1_TO_FLORES), n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(matches)}?" if matches else ""
        raise UnknownLanguageError(f"unknown ISO 639-1 code {short!r}{hint}")
    return ISO639_1_TO_FLORES[key]


def flores_plus_code(code: str) -> str:
    """The FLORES+ hub config name for a registry code (``zho_Hans`` -> ``cmn_Hans``)."""
    return FLORES_PLUS_RENAMES.get(validate_language(code), code)


def sort_languages(codes: Iterable[str], pivot: str = "eng_Latn") -> list[str]:
    """Sorted codes with the pivot language (English) first, the order used when none is given."""
    codes = sorted(set(codes))
    return ([pivot] if pivot in codes else []) + [c for c in codes if c != pivot]
