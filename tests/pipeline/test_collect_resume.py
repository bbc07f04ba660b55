"""Resume after a crash mid-language, recomputation of a damaged language file, refusal of a
foreign store, overwrite."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import sharding as shd
from moe_jax.data.tokenize import EncodedTexts
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import init_params
from moe_jax.routing import collect
from moe_jax.artifacts import routing_store as store
from moe_jax.pipeline.collect import LanguageInput, collect_to_store
from moe_jax.convert.tiny import tiny_hf_config

LANGS = ["aaa_Latn", "bbb_Latn", "ccc_Latn"]
OPTIONS = dict(token_topk=True, overwrite=False, progress=False)
BATCHING = dict(batch_size=4, pad_to_multiple=16)
BATCHES_PER_LANG = 3  # 10 sequences / 4


class Crash(RuntimeError):
    pass


class CountingStep:
    """Wraps the jitted step: counts forward calls, raises on call number ``crash_at`` (1-based)."""

    def __init__(self, step, crash_at=None):
        self.step, self.crash_at, self.calls = step, crash_at, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash(f"injected crash on forward call {self.calls}")
        return self.step(*args)


@pytest.fixture(scope="module")
def setup():
    cfg = ModelConfig.from_hf(tiny_hf_config("olmoe"))
    params = jax.tree.map(jnp.asarray, init_params(cfg, seed=0))
    mesh = shd.make_mesh({"data": -1})
    return cfg, params, mesh, collect.make_collect_step(cfg, mesh, token_topk=True)


def encoder(calls):
    def encode(lang):
        calls.append(lang)
        rng = np.random.default_rng(LANGS.index(lang))
        ids = [rng.integers(1, 128, n).astype(np.int32) for n in rng.integers(3, 25, 10)]
        masks = [np.arange(len(x)) > 0 for x in ids]
        return LanguageInput([f"s{i}" for i in range(10)], EncodedTexts(ids, masks, np.arange(10) == 3),
                             {"skipped_empty": 0})
    return encode


def run(setup, path, step, meta=None, encoded=None, hashes=None, **options):
    """``hashes``: language -> hash of its texts, passed as ``input_hashes`` and recorded by the encoder
    as ``text_sha256`` (what the collect stage does)."""
    cfg, params, mesh, _ = setup
    meta = meta or {"fingerprint": "f1", "model": "tiny olmoe"}
    encode = encoder([] if encoded is None else encoded)
    if hashes is not None:
        plain = encode

        def encode(lang):
            inp = plain(lang)
            return LanguageInput(inp.seq_ids, inp.encoded, {**inp.info, "text_sha256": hashes[lang]})
    return collect_to_store(str(path), meta, LANGS, encode, step=step, params=params, cfg=cfg, mesh=mesh,
                            options={**OPTIONS, **options}, batching=BATCHING, input_hashes=hashes)


@pytest.mark.slow
def test_crash_mid_language_then_resume(setup, tmp_path):
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "run"
    full = CountingStep(setup[3])
    run(setup, ref_dir, full)
    assert full.calls == 3 * BATCHES_PER_LANG

    crashing = CountingStep(setup[3], crash_at=BATCHES_PER_LANG + 2)  # 2nd batch of the 2nd language
    with pytest.raises(Crash, match="injected crash on forward call 5"):
        run(setup, dir_, crashing)
    assert store.done_languages(str(dir_)) == {"aaa_Latn"}
    assert sorted(os.listdir(dir_)) == ["aaa_Latn.npz", "meta.json"]  # no partial file, no temp file
    first = dir_ / "aaa_Latn.npz"
    stat, data = first.stat().st_mtime_ns, first.read_bytes()

    resumed, encoded = CountingStep(setup[3]), []
    summaries = run(setup, dir_, resumed, encoded=encoded)
    assert resumed.calls == 2 * BATCHES_PER_LANG  # nothing finished was recomputed
    assert encoded == ["bbb_Latn", "ccc_Latn"] and list(summaries) == encoded
    assert first.stat().st_mtime_ns == stat and first.read_bytes() == data

    ref_meta, ref = store.read_store(str(ref_dir))
    meta, got = store.read_store(str(dir_))
    assert list(got) == LANGS and list(ref) == LANGS
    for lang in LANGS:
        assert set(got[lang]) == set(ref[lang])
        for key, v in ref[lang].items():
            np.testing.assert_array_equal(got[lang][key], v, err_msg=f"{lang}/{key}")
    # zip entries carry their write time, so the file hash differs between runs (its size does not)
    strip = lambda s: {k: v for k, v in s.items() if k not in ("seconds", "compile_seconds", "tokens_per_s",
                                                               "file_sha256")}
    assert {l: strip(s) for l, s in meta["languages"].items()} == {l: strip(s) for l, s in ref_meta["languages"].items()}

    again = CountingStep(setup[3])
    assert run(setup, dir_, again) == {} and again.calls == 0  # a complete store: nothing to do


def truncate(raw):
    return raw[:-64]


def flip_middle_byte(raw):  # same size: only the recorded sha256 tells
    raw = bytearray(raw)
    raw[len(raw) // 2] ^= 0x01
    return bytes(raw)


@pytest.mark.parametrize("damage", [truncate, flip_middle_byte])
def test_damaged_language_file_is_recomputed_alone(setup, tmp_path, damage):
    run(setup, tmp_path, CountingStep(setup[3]))
    _, ref = store.read_store(str(tmp_path))
    damaged = tmp_path / "bbb_Latn.npz"
    damaged.write_bytes(damage(damaged.read_bytes()))  # damaged after it was recorded as finished
    with pytest.raises(store.CorruptStoreError, match="bbb_Latn.*run the collect stage"):
        store.read_store(str(tmp_path))
    others = {l: (tmp_path / f"{l}.npz").stat().st_mtime_ns for l in ("aaa_Latn", "ccc_Latn")}

    step, encoded = CountingStep(setup[3]), []
    assert list(run(setup, tmp_path, step, encoded=encoded)) == ["bbb_Latn"]
    assert step.calls == BATCHES_PER_LANG and encoded == ["bbb_Latn"]  # exactly that language, again
    assert {l: (tmp_path / f"{l}.npz").stat().st_mtime_ns for l in others} == others
    meta, got = store.read_store(str(tmp_path))
    assert meta["languages"]["bbb_Latn"]["file_size"] == damaged.stat().st_size
    for key, v in ref["bbb_Latn"].items():
        np.testing.assert_array_equal(got["bbb_Latn"][key], v, err_msg=key)


def test_summary_counts(setup, tmp_path):
    summaries = run(setup, tmp_path, CountingStep(setup[3]))
    enc = encoder([])("aaa_Latn")
    s = summaries["aaa_Latn"]
    ids = enc.encoded.input_ids
    assert s["sequences"] == 10 and s["tokens"] == sum(len(x) for x in ids)
    assert s["counted_tokens"] == sum(len(x) - 1 for x in ids) and s["tokens_per_s"] > 0
    assert s["truncated"] == 1 and s["skipped_empty"] == 0
    _, data = store.read_store(str(tmp_path))
    assert data["aaa_Latn"]["seq_ids"].tolist() == [f"s{i}" for i in range(10)]
    assert data["aaa_Latn"]["token_topk"].shape == (s["counted_tokens"], 2, 2)


def test_foreign_store_is_refused_unless_overwrite(setup, tmp_path):
    run(setup, tmp_path, CountingStep(setup[3]))
    other = {"fingerprint": "f2", "model": "another model"}
    step = CountingStep(setup[3])
    with pytest.raises(store.StoreMismatchError, match="another model or configuration"):
        run(setup, tmp_path, step, meta=other)
    assert step.calls == 0 and store.read_meta(str(tmp_path))["fingerprint"] == "f1"
    run(setup, tmp_path, step, meta=other, overwrite=True)
    assert step.calls == 3 * BATCHES_PER_LANG and store.read_meta(str(tmp_path))["fingerprint"] == "f2"


def test_language_whose_texts_changed_is_collected_again(setup, tmp_path):
    hashes = {lang: f"h-{lang}" for lang in LANGS}
    run(setup, tmp_path, CountingStep(setup[3]), hashes=hashes)
    assert store.read_meta(str(tmp_path))["languages"]["bbb_Latn"]["text_sha256"] == "h-bbb_Latn"
    unchanged = {l: (tmp_path / f"{l}.npz").stat().st_mtime_ns for l in ("aaa_Latn", "ccc_Latn")}

    step, encoded = CountingStep(setup[3]), []
    changed = dict(hashes, bbb_Latn="h-bbb_Latn-edited")
    assert list(run(setup, tmp_path, step, encoded=encoded, hashes=changed)) == ["bbb_Latn"]
    assert step.calls == BATCHES_PER_LANG and encoded == ["bbb_Latn"]
    assert {l: (tmp_path / f"{l}.npz").stat().st_mtime_ns for l in unchanged} == unchanged
    assert store.read_meta(str(tmp_path))["languages"]["bbb_Latn"]["text_sha256"] == "h-bbb_Latn-edited"
    again = CountingStep(setup[3])
    assert run(setup, tmp_path, again, hashes=changed) == {} and again.calls == 0
