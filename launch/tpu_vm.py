#!/usr/bin/env python3
"""Run the moe_jax pipeline on a Cloud TPU VM or pod slice with gcloud.

    python launch/tpu_vm.py all --name=moe-run --zone=us-west4-a --accelerator=v5e-8 \\
        --config=configs/olmoe_1b7b_instruct.py [--dry_run] [-- --config.eval.limit=50 ...]

Steps (each a subcommand; ``all`` runs them in order and deletes the VM at the end unless ``--keep``):

    plan     python -m moe_jax.plan on this machine: does the config fit the slice (nothing created yet)
    create   gcloud compute tpus tpu-vm create (the runtime image of the TPU generation)
    install  copy this checkout (git archive of HEAD, or --repo=GIT_URL) to every worker (--worker=all),
             make a Python >= 3.11 venv there and pip install jax[tpu] and moe_jax
    config   copy --config to every worker when it is not one of the checkout's configs/
    run      python -m moe_jax.launch on all workers at once (distributed.enabled=auto: a pod slice
             initialises jax.distributed by itself)
    fetch    copy the report (workdir/report) here: from the bucket, or by scp from worker 0
    delete   gcloud compute tpus tpu-vm delete

``--dry_run`` prints the exact commands, one per line, and runs nothing. A pod slice (more than one
host) needs a ``--workdir`` that every worker reaches: a bucket (``gs://bucket/prefix``; no shared
filesystem needed), or a filesystem every worker mounts at the same path (NFS / Filestore), which the
run then declares with ``distributed.shared_workdir=True`` (moe_jax checks it with a probe file).
Process 0 converts the checkpoint and writes the stores; every process reads them. Arguments after
``--`` are ``--config.*`` overrides for ``moe_jax.plan`` and ``moe_jax.launch``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import NamedTuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # this checkout's moe_jax, installed or not: the table below imports nothing
    sys.path.insert(0, REPO_ROOT)
from moe_jax.accelerators import ACCELERATORS, ALIASES  # noqa: E402  (chips per host, how slice names count)

REMOTE_REPO = "moe_jax"  # under the workers' home directory
REMOTE_VENV = "moe_jax_venv"
ARCHIVE = "moe_jax_src.tar.gz"


class TpuKind(NamedTuple):
    gcloud_type: str  # accelerator-type prefix gcloud expects
    runtime: str  # default --version (TPU VM software image)


# TPU generations as data: gcloud's accelerator-type prefix and runtime image; chips per host and how
# slice names count (v4 / v5p: TensorCores, 2 per chip) come from moe_jax.accelerators.ACCELERATORS.
TPUS: dict[str, TpuKind] = {
    "v4": TpuKind("v4", "tpu-ubuntu2204-base"),
    "v5e": TpuKind("v5litepod", "v2-alpha-tpuv5-lite"),
    "v5p": TpuKind("v5p", "v2-alpha-tpuv5"),
    "v6e": TpuKind("v6e", "v2-alpha-tpuv6e"),
}
STEPS = ("plan", "create", "install", "config", "run", "fetch", "delete")


class Slice(NamedTuple):
    name: str  # as given, e.g. v5e-8
    gcloud_type: str  # e.g. v5litepod-8
    runtime: str
    hosts: int


def parse_accelerator(name: str) -> Slice:
    m = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip())
    kind_name = ALIASES.get(m.group(1), m.group(1)) if m else ""
    if kind_name not in TPUS:
        raise SystemExit(f"unknown TPU accelerator {name!r}; expected <generation>-<size> with generation in "
                         f"{sorted(TPUS)} (v5litepod too), e.g. v5e-8, v4-8, v4-16")
    kind, table, n = TPUS[kind_name], ACCELERATORS[kind_name], int(m.group(2))
    chips = n // 2 if table.name_counts == "cores" else n
    if chips < 1:
        raise SystemExit(f"accelerator {name!r} has no chip")
    return Slice(name, f"{kind.gcloud_type}-{n}", kind.runtime, max(1, -(-chips // table.devices_per_host)))


def _tpu(args, verb: str, *extra: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *extra, f"--zone={args.zone}"]
    return cmd + ([f"--project={args.project}"] if args.project else [])


def _ssh_all(args, remote: str) -> list[str]:
    return _tpu(args, "ssh", args.name, "--worker=all", f"--command={remote}")


def _remote_config(args) -> str:
    """The config's path on the workers, relative to the remote checkout."""
    local = os.path.abspath(args.config)
    configs = os.path.join(REPO_ROOT, "configs")
    if os.path.dirname(local) == configs:
        return f"configs/{os.path.basename(local)}"
    return f"configs/user_{os.path.basename(local)}"  # copied beside configs/common.py by the config step


def workdir(args, tpu: Slice) -> str:
    if args.workdir:
        return args.workdir
    if tpu.hosts > 1:
        raise SystemExit(f"{tpu.name} has {tpu.hosts} hosts: give --workdir=gs://BUCKET/PREFIX (or a path every "
                         "worker mounts, NFS / Filestore); process 0 writes there and every process reads")
    return f"runs/{args.name}"


def _bucket(path: str) -> bool:
    return path.startswith("gs://")


def commands(args, step: str) -> list[list[str]]:
    """The commands of one step (lists of arguments; a remote command is one argument)."""
    tpu = parse_accelerator(args.accelerator)
    if step == "plan":
        return [[sys.executable, "-m", "moe_jax.plan", f"--config={args.config}", f"--accelerator={tpu.name}",
                 *args.overrides]]
    if step == "create":
        cmd = _tpu(args, "create", args.name, f"--accelerator-type={tpu.gcloud_type}",
                   f"--version={args.runtime or tpu.runtime}")
        return [cmd + (["--spot"] if args.spot else [])]
    if step == "install":
        venv = f"~/{REMOTE_VENV}"
        python = ("PY=$(python3 -c 'import sys; print(\"python3\" if sys.version_info >= (3, 11) else \"python3.11\")')"
                  " && { [ $PY = python3 ] || command -v python3.11 >/dev/null || { sudo apt-get update -q && "
                  "sudo apt-get install -yq python3.11 python3.11-venv; }; }")
        if args.repo:
            fetch = [f"rm -rf ~/{REMOTE_REPO} && git clone --depth=1 --branch={args.ref} {args.repo} ~/{REMOTE_REPO}"]
            local = []
        else:
            fetch = [f"rm -rf ~/{REMOTE_REPO} && mkdir -p ~/{REMOTE_REPO} && tar -xzf ~/{ARCHIVE} -C ~/{REMOTE_REPO}"]
            archive = os.path.join(args.tmp_dir, ARCHIVE)
            local = [["git", "-C", REPO_ROOT, "archive", "--format=tar.gz", f"--output={archive}", args.ref],
                     _tpu(args, "scp", archive, f"{args.name}:~/{ARCHIVE}", "--worker=all")]
        remote = " && ".join([python, *fetch, f"$PY -m venv {venv}",
                              f"{venv}/bin/pip install -q -U pip 'jax[tpu]'",
                              f"{venv}/bin/pip install -q -e \"$HOME/{REMOTE_REPO}[gcs]\""])
        return local + [_ssh_all(args, remote)]
    if step == "config":
        remote = _remote_config(args)
        if remote.startswith("configs/user_"):
            return [_tpu(args, "scp", args.config, f"{args.name}:~/{REMOTE_REPO}/{remote}", "--worker=all")]
        return []
    if step == "run":
        wd = workdir(args, tpu)
        shared = ["--config.distributed.shared_workdir=True"] if tpu.hosts > 1 and not _bucket(wd) else []
        launch = ["-m", "moe_jax.launch", f"--config={_remote_config(args)}", f"--workdir={wd}",
                  "--config.distributed.enabled=auto", *shared, *([f"--stages={args.stages}"] if args.stages else []),
                  *args.overrides]
        return [_ssh_all(args, f"cd ~/{REMOTE_REPO} && ~/{REMOTE_VENV}/bin/python {shlex.join(launch)}")]
    if step == "fetch":
        wd = workdir(args, tpu)
        if _bucket(wd):
            return [["gcloud", "storage", "rsync", "--recursive", f"{wd.rstrip('/')}/report",
                     os.path.join(args.out, args.name)]
                    + ([f"--project={args.project}"] if args.project else [])]
        src = wd if wd.startswith("/") else f"~/{REMOTE_REPO}/{wd}"
        return [_tpu(args, "scp", "--recurse", f"{args.name}:{src}/report",
                     os.path.join(args.out, args.name), "--worker=0")]
    if step == "delete":
        return [_tpu(args, "delete", args.name, "--quiet")]
    raise SystemExit(f"unknown step {step!r}; steps: {', '.join(STEPS)}, all")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=STEPS + ("all",))
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True, help="e.g. us-west4-a (v5e), us-central2-b (v4)")
    p.add_argument("--accelerator", default="v5e-8", help="v5e-8, v4-8, v5p-8, v6e-8, v4-16 (2 hosts), ...")
    p.add_argument("--config", default="configs/olmoe_1b7b_instruct.py", help="pipeline config file")
    p.add_argument("--workdir", default="", help="gs://BUCKET/PREFIX, or a path on the workers (default "
                                                 "runs/NAME in the checkout; a pod slice needs a bucket or NFS)")
    p.add_argument("--stages", default="", help="pipeline stages (default: the config's)")
    p.add_argument("--project", default="", help="gcloud project (default: gcloud's)")
    p.add_argument("--runtime", default="", help="TPU software version (default: the generation's image)")
    p.add_argument("--spot", action="store_true", help="create a Spot VM")
    p.add_argument("--repo", default="", help="git URL to clone on the workers (default: copy this checkout)")
    p.add_argument("--ref", default="HEAD", help="commit / branch to archive or clone")
    p.add_argument("--out", default="tpu_reports", help="local folder for fetched reports")
    p.add_argument("--tmp_dir", default="/tmp", help="local folder for the source archive")
    p.add_argument("--keep", action="store_true", help="all: do not delete the VM at the end")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    args.overrides = overrides
    if args.repo and args.ref == "HEAD":
        args.ref = "main"
    steps = [s for s in STEPS if not (s == "delete" and args.keep)] if args.step == "all" else [args.step]
    plan = [(s, c) for s in steps for c in commands(args, s)]  # every command checked before any runs
    if args.dry_run:
        for _, c in plan:
            print(shlex.join(c))
        return 0
    created = False
    try:
        for step, c in plan:
            print(f"[{step}] {shlex.join(c)}", flush=True)
            subprocess.run(c, check=True)
            created |= step == "create"
    except subprocess.CalledProcessError as e:
        if created and args.step == "all" and not args.keep:
            print(f"step failed ({e}); deleting {args.name}", flush=True)
            for c in commands(args, "delete"):
                subprocess.run(c, check=False)
        return e.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
