"""launch/tpu_vm.py: the dry runs print the exact gcloud commands for single-host TPU VMs (v5e-8, v4-8) and
a 2-host pod slice (v4-16), run nothing, and refuse bad input."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "launch", "tpu_vm.py")

INSTALL = ("PY=$(python3 -c 'import sys; print(\"python3\" if sys.version_info >= (3, 11) else \"python3.11\")') && "
           "{ [ $PY = python3 ] || command -v python3.11 >/dev/null || { sudo apt-get update -q && "
           "sudo apt-get install -yq python3.11 python3.11-venv; }; } && rm -rf ~/moe_jax && mkdir -p ~/moe_jax && "
           "tar -xzf ~/moe_jax_src.tar.gz -C ~/moe_jax && $PY -m venv ~/moe_jax_venv && "
           "~/moe_jax_venv/bin/pip install -q -U pip 'jax[tpu]' && ~/moe_jax_venv/bin/pip install -q -e \"$HOME/moe_jax[gcs]\"")


def dry_run(*args):
    out = subprocess.run([sys.executable, SCRIPT, "--dry_run", *args], capture_output=True, text=True,
                         env=dict(os.environ, PATH="/nonexistent"))  # no gcloud can run, even by mistake
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_single_vm_v5e_all_steps():
    lines = dry_run("all", "--name=moe-run", "--zone=us-west4-a", "--accelerator=v5e-8", "--project=my-proj",
                    "--", "--config.eval.limit=50")
    z = "--zone=us-west4-a --project=my-proj"
    assert lines == [
        f"{sys.executable} -m moe_jax.plan --config=configs/olmoe_1b7b_instruct.py --accelerator=v5e-8 "
        "--config.eval.limit=50",
        f"gcloud compute tpus tpu-vm create moe-run --accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite {z}",
        f"git -C {ROOT} archive --format=tar.gz --output=/tmp/moe_jax_src.tar.gz HEAD",
        f"gcloud compute tpus tpu-vm scp /tmp/moe_jax_src.tar.gz 'moe-run:~/moe_jax_src.tar.gz' --worker=all {z}",
        "gcloud compute tpus tpu-vm ssh moe-run --worker=all '--command=" + INSTALL.replace("'", "'\"'\"'") + f"' {z}",
        "gcloud compute tpus tpu-vm ssh moe-run --worker=all '--command=cd ~/moe_jax && ~/moe_jax_venv/bin/python "
        "-m moe_jax.launch --config=configs/olmoe_1b7b_instruct.py --workdir=runs/moe-run "
        f"--config.distributed.enabled=auto --config.eval.limit=50' {z}",
        f"gcloud compute tpus tpu-vm scp --recurse 'moe-run:~/moe_jax/runs/moe-run/report' tpu_reports/moe-run "
        f"--worker=0 {z}",
        f"gcloud compute tpus tpu-vm delete moe-run --quiet {z}",
    ]


def test_single_vm_v4_with_git_repo_and_keep():
    lines = dry_run("all", "--name=v4run", "--zone=us-central2-b", "--accelerator=v4-8", "--keep", "--spot",
                    "--repo=https://example.org/moe_jax.git", "--config=configs/qwen3_30b_a3b.py",
                    "--stages=convert,collect,analyze,report")
    z = "--zone=us-central2-b"
    assert lines[1] == f"gcloud compute tpus tpu-vm create v4run --accelerator-type=v4-8 --version=tpu-ubuntu2204-base {z} --spot"
    assert len(lines) == 5 and not any("delete" in l for l in lines)  # --keep; git clone instead of archive + scp
    assert "git clone --depth=1 --branch=main https://example.org/moe_jax.git ~/moe_jax &&" in lines[2]
    assert lines[3] == ("gcloud compute tpus tpu-vm ssh v4run --worker=all '--command=cd ~/moe_jax && "
                        "~/moe_jax_venv/bin/python -m moe_jax.launch --config=configs/qwen3_30b_a3b.py "
                        "--workdir=runs/v4run --config.distributed.enabled=auto "
                        f"--stages=convert,collect,analyze,report' {z}")


def test_two_host_slice_with_a_bucket_workdir():
    """The pod recipe: a gs:// workdir needs no shared filesystem; the report is fetched from the bucket."""
    args = ("--name=pod", "--zone=us-central2-b", "--accelerator=v4-16", "--workdir=gs://my-bucket/runs/qwen3")
    z = "--zone=us-central2-b"
    assert dry_run("run", *args, "--config=configs/qwen3_30b_a3b.py") == [
        "gcloud compute tpus tpu-vm ssh pod --worker=all '--command=cd ~/moe_jax && ~/moe_jax_venv/bin/python "
        "-m moe_jax.launch --config=configs/qwen3_30b_a3b.py --workdir=gs://my-bucket/runs/qwen3 "
        f"--config.distributed.enabled=auto' {z}"]
    assert dry_run("fetch", *args, "--project=p") == [
        "gcloud storage rsync --recursive gs://my-bucket/runs/qwen3/report tpu_reports/pod --project=p"]
    assert '-e "$HOME/moe_jax[gcs]"' in dry_run("install", *args)[-1]  # gcsfs on every worker


def test_two_host_slice_runs_on_every_worker_with_a_shared_workdir(tmp_path):
    cfg = tmp_path / "mine.py"
    cfg.write_text("")
    args = ("--name=pod", "--zone=us-central2-b", "--accelerator=v4-16", f"--config={cfg}")
    z = "--zone=us-central2-b"
    lines = dry_run("create", *args, "--workdir=/mnt/shared/run")
    assert lines == [f"gcloud compute tpus tpu-vm create pod --accelerator-type=v4-16 --version=tpu-ubuntu2204-base {z}"]
    # a config outside configs/ is copied beside configs/common.py on every worker
    assert dry_run("config", *args, "--workdir=/mnt/shared/run") == [
        f"gcloud compute tpus tpu-vm scp {cfg} 'pod:~/moe_jax/configs/user_mine.py' --worker=all {z}"]
    assert dry_run("run", *args, "--workdir=/mnt/shared/run") == [
        "gcloud compute tpus tpu-vm ssh pod --worker=all '--command=cd ~/moe_jax && ~/moe_jax_venv/bin/python "
        "-m moe_jax.launch --config=configs/user_mine.py --workdir=/mnt/shared/run "
        f"--config.distributed.enabled=auto --config.distributed.shared_workdir=True' {z}"]
    assert dry_run("fetch", *args, "--workdir=/mnt/shared/run") == [
        f"gcloud compute tpus tpu-vm scp --recurse pod:/mnt/shared/run/report tpu_reports/pod --worker=0 {z}"]
    # the workers' local disks are not shared: a 2-host slice without --workdir is refused
    out = subprocess.run([sys.executable, SCRIPT, "run", *args, "--dry_run"], capture_output=True, text=True)
    assert out.returncode != 0 and "v4-16 has 2 hosts: give --workdir" in out.stderr


@pytest.mark.parametrize("acc, expected", [("v5e-16", ("v5litepod-16", 2)), ("v5litepod-8", ("v5litepod-8", 1)),
                                           ("v6e-8", ("v6e-8", 1)), ("v5p-8", ("v5p-8", 1)), ("v4-32", ("v4-32", 4))])
def test_slice_table(acc, expected):
    import importlib.util
    spec = importlib.util.spec_from_file_location("tpu_vm", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    s = mod.parse_accelerator(acc)
    assert (s.gcloud_type, s.hosts) == expected
    with pytest.raises(SystemExit, match="unknown TPU accelerator 'v9-8'"):
        mod.parse_accelerator("v9-8")
