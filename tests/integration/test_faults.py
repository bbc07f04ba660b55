"""Fault injection through the real command line: SIGKILL the convert, collect and eval stages while
they work, damage their outputs in several ways, rerun, and require the outputs of an uninterrupted
run bit for bit, no temp files left, and nothing outside the workdir touched.

Kills come from outside (no hook in the code): the test polls the workdir and SIGKILLs the launch's
process group when a file appears (the conversion's temp dir, the first language file of the routing
store, the first eval record file). Outputs are compared by sha256 of every file of the workdir,
except what legitimately differs between two runs (``VOLATILE_FILES``, ``VOLATILE_KEYS``; absolute
paths inside JSON files are written relative to the workdir first).
"""

import glob
import json
import logging
import os

import pytest

from tests.helpers.cli_runs import finish, kill_when, start
from tests.helpers.configs import demo_with
from tests.helpers.workdirs import digests
from moe_jax.pipeline import registry as stages
from moe_jax.convert import loader
from moe_jax.convert.safetensors_io import CheckpointError
from moe_jax.artifacts import eval_records as rec
from moe_jax.artifacts import routing_store as store

# the tests over the killed and resumed runs are slow (stages through the command line); the others are not

LANGS = ["eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn"]
EVAL_LANGS = ["eng_Latn", "fra_Latn", "deu_Latn"]
SETTINGS = {"data.languages": ",".join(LANGS), "data.max_sentences": 6, "tasks": {}, "collect.token_topk": False,
            "eval.tasks": "belebele", "eval.languages": ",".join(EVAL_LANGS), "eval.limit": 3, "plan.check": False}
STAGES = "convert,collect,eval"
ARGS = ["--config=configs/demo.py", f"--stages={STAGES}", *(f"--config.{k}={v}" for k, v in SETTINGS.items())]
CACHE = []  # the module's Hugging Face home (set by the fixture)


def launch(workdir, *extra):
    # every launch shares the session's compilation cache (conftest.py): later runs skip most compiles;
    # cached executables compute the same bits. The Hugging Face cache (the eval stage's data loading
    # caches the demo items there) is the module's own, outside the workdirs, so that it is seen.
    return start([f"--workdir={workdir}", *ARGS, *extra], {"HF_HOME": CACHE[0]})


def config():
    """``ARGS``'s config, for a run in-process."""
    return demo_with(SETTINGS)


def leftovers(workdir):
    """Temp files and dirs of killed writes: atomic_write's ``.NAME.*.tmp``, the conversion's
    ``.checkpoint.tmp-*`` / ``.checkpoint.old-*``."""
    found = []
    for d, dirs, names in os.walk(workdir):
        found += [os.path.join(d, n) for n in dirs + names if n.startswith(".") and (".tmp" in n or ".old-" in n)]
    return found


def snapshot(path):
    return {os.path.relpath(os.path.join(d, n), path): (os.path.getsize(os.path.join(d, n)),
                                                        os.stat(os.path.join(d, n)).st_mtime_ns)
            for d, _, names in os.walk(path) for n in names}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference (uninterrupted) run, started in parallel with the interrupted one: ``(ref, work,
    sibling snapshot, sibling)``."""
    base = tmp_path_factory.mktemp("faults")
    CACHE[:] = [str(base / "hf_home")]
    ref, work, sibling = base / "ref", base / "work", base / "sibling"
    sibling.mkdir()
    (sibling / "notes.txt").write_text("a user's file beside the workdir\n")
    before = snapshot(base)
    reference = launch(ref)

    # 1. killed during the conversion: its temp dir (tensors being read, params being saved) exists
    proc = launch(work)
    kill_when(proc, lambda: glob.glob(str(work / ".checkpoint.tmp-*")), "the conversion's temp dir")
    assert glob.glob(str(work / ".checkpoint.tmp-*")) and not (work / "checkpoint" / "moe_jax.json").exists()
    # 2. killed in the collect stage once its first language file is written
    proc = launch(work)
    kill_when(proc, lambda: (work / "routing" / f"{LANGS[0]}.npz").exists(), "the first routing language file")
    assert not glob.glob(str(work / ".checkpoint.tmp-*"))  # the stale temp dir of kill 1 was removed
    assert set(store.read_meta(str(work / "routing"))["languages"]) < set(LANGS)
    # 3. killed in the eval stage once its first record file is written
    proc = launch(work)
    kill_when(proc, lambda: (work / "eval" / "belebele" / f"{EVAL_LANGS[0]}.jsonl").exists(), "the first eval record")
    assert set(store.read_meta(str(work / "routing"))["languages"]) == set(LANGS)
    # the record written before the kill, damaged (whether or not the kill came before the manifest listed it)
    _truncate(work / "eval" / "belebele" / f"{EVAL_LANGS[0]}.jsonl")
    # 4. to the end
    finish(launch(work))
    finish(reference)
    return ref, work, before, base


@pytest.mark.slow
def test_killed_runs_resume_bit_identical(runs):
    ref, work, before, base = runs
    want, got = digests(ref), digests(work)
    assert sorted(got) == sorted(want)
    assert {k for k in want if got[k] != want[k]} == set()
    assert leftovers(work) == [] and leftovers(ref) == []
    after = snapshot(base)
    assert {k: v for k, v in after.items() if k.startswith("sibling")} == \
           {k: v for k, v in before.items() if k.startswith("sibling")}  # nothing outside the workdirs touched
    # outside the workdirs only the Hugging Face cache was written to (datasets' cache of the eval items)
    assert {k.split(os.sep)[0] for k in after} == {"ref", "work", "sibling", "hf_home"}
    assert {k.split(os.sep)[1] for k in after if k.startswith("hf_home")} == {"datasets"}


def _flip(path, offset=None):
    data = bytearray(open(path, "rb").read())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    open(path, "wb").write(bytes(data))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _replace(path, other):
    with open(other, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data)


def _chunks(params):
    """Two chunk files of arrays of one shape (another layer's weights) and the other chunk files."""
    by_shape = {}
    for zarray in sorted(glob.glob(str(params / "*" / ".zarray"))):
        shape = tuple(json.load(open(zarray))["shape"])
        by_shape.setdefault(shape, []).extend(sorted(glob.glob(os.path.join(os.path.dirname(zarray), "[0-9]*"))))
    same = next(files for files in by_shape.values() if len(files) >= 2)[:2]
    return same, [f for files in by_shape.values() for f in files if f not in same]


@pytest.mark.slow
def test_damaged_files_are_named_and_redone(runs, caplog):
    """Each kind of damage (truncate, same-size byte flip, delete, replace with another file of the
    same kind) on the routing store, the converted checkpoint and the eval records (truncated in the
    fixture, before the last resumed run): readers name the
    file and the command that repairs it, and that command (here the three stages in one run,
    in-process) restores the uninterrupted run's outputs."""
    ref, work, _, _ = runs
    w = str(work)
    routing, ckpt, ev = work / "routing", work / "checkpoint", work / "eval" / "belebele"
    _truncate(routing / f"{LANGS[0]}.npz")
    _flip(routing / f"{LANGS[1]}.npz")
    os.remove(routing / f"{LANGS[2]}.npz")
    _replace(routing / f"{LANGS[3]}.npz", routing / f"{LANGS[1]}.npz")  # another language's (valid) file
    same, others = _chunks(ckpt / "params")
    _truncate(others[0])
    _flip(others[1])
    os.remove(others[2])
    _replace(same[1], same[0])  # another parameter's chunk of the same shape: a valid zarr chunk
    _replace(ev / f"{EVAL_LANGS[2]}.jsonl", ev / f"{EVAL_LANGS[0]}.jsonl")  # another language's records
    _flip(ev / f"{EVAL_LANGS[0]}.jsonl", offset=5)
    os.remove(ev / f"{EVAL_LANGS[1]}.jsonl")

    with pytest.raises(store.CorruptStoreError, match=f"--workdir={w} --stages=collect"):
        store.read_store(str(routing))
    with pytest.raises(CheckpointError, match="(?s)damaged.*is missing.*--stages=convert"):
        loader.load_params(str(ckpt))
    for lang in EVAL_LANGS:
        with pytest.raises(ValueError, match=f"{lang}.jsonl .*--workdir={w} --stages=eval"):
            rec.read_records(str(work / "eval"), "belebele", lang)

    # in-process (what the command line runs; the launches above show the command line)
    with caplog.at_level(logging.INFO, logger="moe_jax"):
        stages.run_stages(config(), w, STAGES)
    assert "will be converted again" in caplog.text and "will be collected again" in caplog.text
    want, got = digests(ref), digests(work)
    assert sorted(got) == sorted(want)
    assert {k for k in want if got[k] != want[k]} == set()
    assert leftovers(work) == []


def test_leftovers_of_a_killed_overwrite_are_removed(tmp_path):
    """A kill while ``--overwrite`` removed the replaced conversion leaves ``.OUT.old-*`` (one during the
    conversion ``.OUT.tmp-*``): the next conversion to OUT removes both, and nothing else."""
    from moe_jax.convert.checkpoint import remove_stale_temps
    stale = [tmp_path / ".out.old-ab12cd34", tmp_path / ".out.tmp-x_9y8z7w"]
    keep = [tmp_path / ".out.old-mine", tmp_path / ".other.tmp-ab12cd34", tmp_path / "out.old-ab12cd34"]
    for d in stale + keep:
        (d / "params").mkdir(parents=True)
    assert sorted(remove_stale_temps(str(tmp_path / "out"))) == sorted(map(str, stale))
    assert all(d.exists() for d in keep) and not any(d.exists() for d in stale)


def test_damaged_conversion_record_names_the_repair(tmp_path):
    """``moe_jax.json`` itself damaged: loading says to remove the directory and convert again (nothing
    else records what moe_jax wrote there, so ``--overwrite`` refuses to delete it)."""
    from moe_jax.convert import tiny
    from moe_jax.convert.checkpoint import convert_checkpoint
    out = convert_checkpoint(tiny.write_random_hf_checkpoint(str(tmp_path / "hf"), tiny.tiny_hf_config("qwen3_moe")),
                             tmp_path / "out")
    _truncate(os.path.join(out, "moe_jax.json"))
    with pytest.raises(CheckpointError, match=f"(?s)cannot read .*moe_jax.json.*remove {out} and convert again"):
        loader.load_params(out)
    with pytest.raises(ValueError, match="is not a moe_jax conversion"):
        convert_checkpoint(tmp_path / "hf", out, overwrite=True)
