"""moe_jax.io.integrity directly: publish / verify / damage / unpublish on a layout, and the resumable
units (resume, a damaged unit redone, a kill between data and record leaves the unit unfinished,
overwrite as each layout declares it)."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from moe_jax.io import hashing, integrity, storage

# a layout unlike the default one: other record file, entry key, field names, suffix, nested names
UNITS_LAYOUT = integrity.RecordLayout("meta.json", "units", "file_size", "file_sha256", format="test/1",
                                      suffix=".bin", nested=True)
LAZY = integrity.Units(UNITS_LAYOUT, mismatch="{dir}: fingerprint {old!r} != {new!r}", redo="{name} is redone",
                       refuse_unfinished=False)
EAGER = integrity.Units(UNITS_LAYOUT, mismatch="{dir}: fingerprint {old!r} != {new!r}", redo="{name} is redone",
                        delete_on_overwrite=True, volatile_keys=("code_version",))


def test_hashing_helpers(tmp_path):
    data = b"\x00payload" * 1000
    (tmp_path / "f").write_bytes(data)
    assert hashing.sha256_bytes(data) == hashlib.sha256(data).hexdigest()
    assert hashing.sha256_text("é") == hashlib.sha256("é".encode("utf-8")).hexdigest()
    assert hashing.file_digest(str(tmp_path / "f")) == (len(data), hashlib.sha256(data).hexdigest())
    assert hashing.digest_files([str(tmp_path / "f")] * 3) == [hashing.file_digest(str(tmp_path / "f"))] * 3
    assert hashing.digest_files([]) == []


def test_publish_verify_damage_unpublish(tmp_path):
    d = str(tmp_path / "d")
    record = integrity.publish(d, UNITS_LAYOUT, {"a/x": b"one", "b": b"two"}, {"a/x": {"n": 1}})
    on_disk = json.loads((tmp_path / "d" / "meta.json").read_bytes())
    assert on_disk == record == {"format": "test/1", "units": {
        "a/x": {"n": 1, "file_size": 3, "file_sha256": hashlib.sha256(b"one").hexdigest()},
        "b": {"file_size": 3, "file_sha256": hashlib.sha256(b"two").hexdigest()}}}
    assert (tmp_path / "d" / "a" / "x.bin").read_bytes() == b"one"
    assert integrity.verify(d, "a/x", UNITS_LAYOUT) == b"one"
    assert integrity.damage(d, UNITS_LAYOUT) == []
    (tmp_path / "d" / "b.bin").write_bytes(b"TWO")  # same size, other bytes
    with pytest.raises(integrity.DigestMismatchError, match=r"b.bin has 3 bytes with sha256 \w+, but 3 .*; redo it"):
        integrity.verify(d, "b", UNITS_LAYOUT, hint="redo it")
    (tmp_path / "d" / "a" / "x.bin").unlink()
    assert integrity.damage(d, UNITS_LAYOUT) == ["a/x.bin (missing)", "b.bin (changed after it was written)"]
    assert integrity.damage(d, UNITS_LAYOUT, names=["b"]) == ["b.bin (changed after it was written)"]
    with pytest.raises(integrity.DigestMismatchError, match="x.bin is listed in meta.json but missing; redo it"):
        integrity.verify(d, "a/x", UNITS_LAYOUT, hint="redo it")
    with pytest.raises(integrity.UnpublishedError, match="c.bin is not published"):
        integrity.verify(d, "c", UNITS_LAYOUT)
    integrity.unpublish(d, UNITS_LAYOUT)
    assert integrity.read_record(d, UNITS_LAYOUT) is None and integrity.damage(d, UNITS_LAYOUT) == []
    with pytest.raises(integrity.UnpublishedError, match="not published"):
        integrity.verify(d, "b", UNITS_LAYOUT)
    with pytest.raises(ValueError, match="plain file names"):
        integrity.publish(d, integrity.MANIFEST, {"a/b": b""})  # the default layout is flat
    with pytest.raises(ValueError, match="plain file names"):
        integrity.publish(d, UNITS_LAYOUT, {"a/.hidden": b""})


def test_a_rewritten_entry_is_dropped_before_its_data(tmp_path, monkeypatch):
    d = str(tmp_path)
    integrity.publish(d, UNITS_LAYOUT, {"u": b"v1"})
    writes = []
    real = integrity.write_record
    monkeypatch.setattr(integrity, "write_record", lambda *a: (writes.append(dict(a[1]["units"])), real(*a)))
    integrity.publish(d, UNITS_LAYOUT, {"u": b"version 2"})
    assert [sorted(w) for w in writes] == [[], ["u"]]  # the old entry went first; the new one came last
    assert integrity.verify(d, "u", UNITS_LAYOUT) == b"version 2"


def test_damage_names_size_and_shortened_digest_with_its_wording(tmp_path):
    layout = integrity.RecordLayout("r.json", wording=integrity.Wording(
        item_missing="{rel} is missing", item_resized="{rel} has {size} bytes, {want_size} were written",
        item_changed="{rel} changed ({algo} {got}, {want} was written)"))
    d = str(tmp_path)
    record = integrity.publish(d, layout, {"a": b"aaaa", "b": b"bbbb", "c": b"cccc"})
    (tmp_path / "a").unlink()
    (tmp_path / "b").write_bytes(b"bb")
    (tmp_path / "c").write_bytes(b"CCCC")
    got, want = hashlib.sha256(b"CCCC").hexdigest(), hashlib.sha256(b"cccc").hexdigest()
    assert integrity.damage(d, layout) == ["a is missing", "b has 2 bytes, 4 were written",
                                           f"c changed (sha256 {got[:12]}..., {want[:12]}... was written)"]
    assert integrity.damage(d, layout, record, content=False) == ["a is missing", "b has 2 bytes, 4 were written"]


def test_repair_hint_format():
    assert integrity.repair("collect", "/w") == ("run the collect stage again: python -m moe_jax.launch "
                                                 "--config=<your config> --workdir=/w --stages=collect")
    assert integrity.repair("eval", "gs://b/w", "to redo it").startswith("run the eval stage again to redo it: ")


def test_units_resume_and_a_damaged_unit_is_redone(tmp_path, caplog):
    d = str(tmp_path)
    opened = integrity.open_units(d, LAZY, {"fingerprint": "f1"})
    assert opened == {"fingerprint": "f1", "format": "test/1", "units": {}}
    integrity.write_unit(d, LAZY, "t/en", b"english", {"score": 1}, opened)
    integrity.write_unit(d, LAZY, "t/de", b"german", {"score": 2}, opened)
    again = integrity.open_units(d, LAZY, {"fingerprint": "f1"})  # a rerun keeps what is finished
    assert integrity.done_units(d, LAZY, again) == {"t/en", "t/de"}
    (tmp_path / "t" / "de.bin").write_bytes(b"GERMAN")  # same size, changed in place
    with caplog.at_level(logging.WARNING, logger="moe_jax.io.integrity"):
        assert integrity.done_units(d, LAZY) == {"t/en"}
    assert "de.bin has 6 bytes with sha256" in caplog.text and "t/de is redone" in caplog.text
    integrity.write_unit(d, LAZY, "t/de", b"german", {"score": 2})
    assert integrity.done_units(d, LAZY) == {"t/en", "t/de"}


def test_kill_between_data_and_record_leaves_the_unit_unfinished(tmp_path, monkeypatch):
    d = str(tmp_path)
    integrity.open_units(d, LAZY, {"fingerprint": "f1"})
    integrity.write_unit(d, LAZY, "en", b"english", {})
    real = integrity.atomic_write_json

    def killed(p, obj):
        if "fr" in obj["units"]:
            raise KeyboardInterrupt("killed before the record")
        real(p, obj)
    monkeypatch.setattr(integrity, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        integrity.write_unit(d, LAZY, "fr", b"french", {})
    monkeypatch.undo()
    assert (tmp_path / "fr.bin").read_bytes() == b"french"  # the data is there, but no reader trusts it
    assert integrity.done_units(d, LAZY) == {"en"}
    with pytest.raises(integrity.UnpublishedError):
        integrity.verify(d, "fr", UNITS_LAYOUT)


def test_another_fingerprint_lazy_and_eager_overwrite(tmp_path):
    lazy, eager = str(tmp_path / "lazy"), str(tmp_path / "eager")
    for d, units in ((lazy, LAZY), (eager, EAGER)):
        integrity.open_units(d, units, {"fingerprint": "f1"})
        integrity.write_unit(d, units, "en", b"english", {})
        with pytest.raises(integrity.StoreMismatchError, match="fingerprint 'f1' != 'f2'"):
            integrity.open_units(d, units, {"fingerprint": "f2"})
    # lazy (eval records): nothing deleted or rewritten until the first replacement unit is written
    opened = integrity.open_units(lazy, LAZY, {"fingerprint": "f2"}, overwrite=True)
    assert integrity.read_record(lazy, UNITS_LAYOUT)["fingerprint"] == "f1" and storage.exists(lazy + "/en.bin")
    integrity.write_unit(lazy, LAZY, "de", b"german", {}, opened)
    assert integrity.read_record(lazy, UNITS_LAYOUT) == {**opened, "units": {"de": integrity.entry_of(b"german", UNITS_LAYOUT)}}
    # eager (routing store): the old units are deleted at open
    integrity.open_units(eager, EAGER, {"fingerprint": "f2"}, overwrite=True)
    assert not storage.exists(eager + "/en.bin") and integrity.listed(integrity.read_record(eager, UNITS_LAYOUT), UNITS_LAYOUT) == {}
    # a record of another fingerprint listing no unit: replaced freely (lazy), refused (eager)
    integrity.open_units(lazy + "2", LAZY, {"fingerprint": "f1"})
    integrity.open_units(lazy + "2", LAZY, {"fingerprint": "f2"})
    with pytest.raises(integrity.StoreMismatchError):
        integrity.open_units(eager, EAGER, {"fingerprint": "f3"})


def test_a_volatile_field_alone_does_not_rewrite_a_finished_record(tmp_path):
    d = str(tmp_path)
    integrity.open_units(d, EAGER, {"fingerprint": "f1", "code_version": "1"})
    integrity.write_unit(d, EAGER, "en", b"english", {})
    before = (tmp_path / "meta.json").read_bytes()
    assert integrity.open_units(d, EAGER, {"fingerprint": "f1", "code_version": "2"})["code_version"] == "1"
    assert (tmp_path / "meta.json").read_bytes() == before


def test_temp_files_of_a_killed_writer_are_removed_at_open(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / ".en.bin.123.tmp").write_bytes(b"half")
    (tmp_path / "t" / ".de.bin.456.tmp").write_bytes(b"half")
    integrity.open_units(str(tmp_path), LAZY, {"fingerprint": "f1"})
    assert storage.walk_files(str(tmp_path)) == ["meta.json"]


def test_unreadable_record(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(integrity.CorruptStoreError, match="meta.json is not valid JSON"):
        integrity.open_units(str(tmp_path), LAZY, {"fingerprint": "f1"}, overwrite=True)
    replacing = integrity.Units(UNITS_LAYOUT, mismatch="", replace_unreadable=True)
    assert integrity.open_units(str(tmp_path), replacing, {"fingerprint": "f1"}, overwrite=True)["units"] == {}


def test_a_record_of_another_format_is_refused(tmp_path):
    integrity.publish(str(tmp_path), integrity.MANIFEST, {"a": b"x"})
    record = integrity.read_record(str(tmp_path), integrity.MANIFEST)
    storage.atomic_write_json(str(tmp_path / "manifest.json"), dict(record, format="other/1"))
    with pytest.raises(integrity.CorruptStoreError, match="manifest.json is not a moe_jax.manifest/1 record"):
        integrity.verify(str(tmp_path), "a")
