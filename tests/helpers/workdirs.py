"""Comparing workdirs byte for byte."""

import hashlib
import json
import os

from moe_jax.io import storage


def snapshot(root):
    """{relative path: (sha256, mtime_ns)} of every file under root ({} when it does not exist)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


# orbax's files that hold the save's timestamps (also left out of moe_jax.json's "files" record)
ORBAX_STAMPS = ("params/_CHECKPOINT_METADATA", "params/commit_success.txt")
VOLATILE_FILES = {f"checkpoint/{p}" for p in ORBAX_STAMPS}
# wall-clock fields: moe_jax.json "created"; a routing store language's "seconds", "compile_seconds",
# "tokens_per_s"; the store's "code_version" (version + git commit: in a shared checkout someone may commit
# between the reference run and the resumed one)
VOLATILE_KEYS = {"created", "seconds", "compile_seconds", "tokens_per_s", "code_version", *ORBAX_STAMPS}


def strip_volatile(x, workdir):
    if isinstance(x, dict):
        return {k: strip_volatile(v, workdir) for k, v in x.items() if k not in VOLATILE_KEYS}
    if isinstance(x, list):
        return [strip_volatile(v, workdir) for v in x]
    return x.replace(workdir, "<workdir>") if isinstance(x, str) else x


def digests(root):
    """{path under root: sha256} of every file or object (local or gs://), ``VOLATILE_FILES`` left out and
    JSON normalised (``strip_volatile``; the workdir written as <workdir>)."""
    out = {}
    for rel in storage.walk_files(root):
        if rel in VOLATILE_FILES:
            continue
        data = storage.read_bytes(storage.join(root, rel))
        if rel.endswith(".json"):
            data = json.dumps(strip_volatile(json.loads(data), str(root)), sort_keys=True).encode()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out
