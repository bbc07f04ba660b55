"""The workdir lock: one writer per stage output at a time; a live holder is named, a dead one's
lock is taken over (said so), a lock from another host is refused with the file to delete."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading

import pytest

from moe_jax.pipeline import registry as stages, lock as workdir_lock
from moe_jax.io import storage
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline.lock import WorkdirLockedError

HOST = socket.gethostname()


def plant(workdir, stage, pid, host=HOST, started=None, since="2026-12-07T10:00:00+00:00"):
    """A lock record written by hand, as another run would have left it."""
    storage.atomic_write_bytes(wd.lock_path(workdir, stage), json.dumps(
        {"format": workdir_lock.FORMAT, "stage": stage, "pid": pid, "host": host, "since": since,
         "started": started, "command": "python -m moe_jax.launch --stages=eval", "token": "planted"}).encode())


@pytest.fixture
def sleeper():
    """A live process of this host (stopped at the end)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(params=["local", "gcs"])
def workdir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "w")
    return request.getfixturevalue("gcs_dir")


def test_lock_is_taken_and_released(workdir):
    path = wd.lock_path(workdir, "eval")
    with workdir_lock.hold(workdir, ["eval", "report"]) as taken:
        held = storage.read_json(path)
        assert held["pid"] == os.getpid() and held["host"] == HOST and held["stage"] == "eval"
        assert [r["stage"] for r in taken] == ["eval", "report"]
    assert not storage.exists(path) and not storage.exists(wd.lock_path(workdir, "report"))


def test_live_holder_is_named_and_nothing_is_taken(workdir, sleeper):
    plant(workdir, "eval", sleeper.pid)
    with pytest.raises(WorkdirLockedError, match=f"the eval stage's outputs in {workdir} are being written by another "
                                                 f"run: pid {sleeper.pid} on host {HOST} since 2026-12-07T10:00:00"
                                                 r"\+00:00, \d+ s ago \(command: python -m moe_jax.launch "
                                                 rf"--stages=eval\), still running.*kill {sleeper.pid}"):
        with workdir_lock.hold(workdir, ["collect", "eval"]):
            pytest.fail("ran while another run held the lock")
    assert not storage.exists(wd.lock_path(workdir, "collect"))  # all or none: collect's lock given back
    assert storage.read_json(wd.lock_path(workdir, "eval"))["pid"] == sleeper.pid  # the holder's lock untouched


def test_stale_lock_of_a_dead_process_is_taken_over_and_said(workdir, caplog):
    gone = dead_pid()
    plant(workdir, "steer", gone)
    with caplog.at_level(logging.WARNING, logger="moe_jax.pipeline.lock"):
        with workdir_lock.hold(workdir, ["steer"]):
            assert storage.read_json(wd.lock_path(workdir, "steer"))["pid"] == os.getpid()
    assert f"taking over the steer stage's lock of pid {gone} on host {HOST}" in caplog.text
    assert "no longer running" in caplog.text


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """The recorded start time differs from the process now at that pid (ours): the holder is gone."""
    work = str(tmp_path)
    plant(work, "eval", os.getpid(), started="1")
    with workdir_lock.hold(work, ["eval"]):
        assert storage.read_json(wd.lock_path(work, "eval"))["token"] != "planted"


def test_a_zombie_holder_is_dead(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert not workdir_lock.process_alive(proc.pid)
    finally:
        proc.wait()


def test_lock_of_another_host_is_refused_with_the_file_to_delete(tmp_path):
    work = str(tmp_path)
    plant(work, "collect", 1, host="tpu-vm-7")
    with pytest.raises(WorkdirLockedError, match=f"pid 1 on host tpu-vm-7 .*cannot check it: if that run is gone, "
                                                 f"delete {wd.lock_path(work, 'collect')}"):
        workdir_lock.acquire(work, "collect")


def test_unreadable_lock_is_refused_naming_it(tmp_path):
    work = str(tmp_path)
    storage.atomic_write_bytes(wd.lock_path(work, "eval"), b"garbage")
    with pytest.raises(WorkdirLockedError, match=f"{wd.lock_path(work, 'eval')} is not a moe_jax.lock/1 lock"):
        workdir_lock.acquire(work, "eval")


def test_racing_writers_one_wins(tmp_path):
    """Eight threads take the same lock at once: exactly one gets it (local: the hard link)."""
    work, wins, refusals = str(tmp_path), [], []
    barrier = threading.Barrier(8)

    def take():
        barrier.wait()
        try:
            wins.append(workdir_lock.acquire(work, "eval"))
        except WorkdirLockedError as e:
            refusals.append(str(e))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(refusals) == 7
    assert storage.read_json(wd.lock_path(work, "eval"))["token"] == wins[0]["token"]


CALLS = []


def record_stage(config, workdir):
    CALLS.append(storage.read_json(wd.lock_path(workdir, "record")))


def test_run_stages_holds_the_lock_and_refuses_a_second_writer(tmp_path, monkeypatch, sleeper):
    monkeypatch.setitem(stages.STAGES, "record", f"{__name__}:record_stage")
    config = stages.default_config()
    work = str(tmp_path)
    CALLS.clear()
    stages.run_stages(config, work, "record")
    assert CALLS[0]["pid"] == os.getpid() and not os.path.exists(wd.lock_path(work, "record"))
    plant(work, "record", sleeper.pid)
    with pytest.raises(WorkdirLockedError, match=f"pid {sleeper.pid} on host {HOST}"):
        stages.run_stages(config, work, "record")
    assert len(CALLS) == 1
