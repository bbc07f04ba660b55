"""Paths that are local or on cloud storage (``gs://bucket/prefix``), and writes a reader can trust.

One path abstraction for both: ``etils.epath``. Orbax (the checkpoint library) already depends on it
and does its own directory work on ``gs://`` through it, so checkpoints, routing stores and results
share one client and one configuration. Without TensorFlow, epath serves ``gs://`` through
fsspec + ``gcsfs`` (extra ``moe_jax[gcs]``); tensorstore, which orbax uses for the arrays, has its
own GCS driver. Local paths use ``os`` directly (same behaviour, fsync and file modes included).

One guarantee, on either kind of path: ``atomic_write``: a reader sees the old object or the complete
new one. Locally: temp file in the same directory + fsync + rename. On GCS an object becomes visible
only once its upload completes (strong read-after-write consistency), so the bytes are uploaded
straight to the final name. A DIRECTORY of objects is not atomic anywhere: it is published through
one record written last (``moe_jax.io.integrity``); sha256s are ``moe_jax.io.hashing``'s.

Clients are configured from the environment, as Google's own clients are: ``STORAGE_EMULATOR_HOST``
points gcsfs at an emulator (see ``use_gcs_emulator``); credentials come from the usual Google
application-default chain.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import re
import shutil
import tempfile
from typing import IO, Any, BinaryIO, Callable, Sequence

from etils import epath

_CHUNK = 1 << 20  # bytes read at a time when copying (objects can be GBs)


def is_remote(p: str | os.PathLike) -> bool:
    """True for a URL (``gs://...``), False for a local path."""
    return "://" in os.fspath(p)


# Google Cloud Storage bucket names (tensorstore, which orbax writes arrays with, refuses others late)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


def path(p: str | os.PathLike) -> epath.Path:
    """A pathlib-like path for a local path or a ``gs://`` URL (fails early for ``gs://`` without gcsfs
    or with an invalid bucket name)."""
    s = os.fspath(p)
    if is_remote(s) and not s.startswith("gs://"):
        raise ValueError(f"{s}: the only URLs moe_jax reads and writes are gs://bucket/prefix")
    if s.startswith("gs://"):
        bucket = s[len("gs://"):].split("/", 1)[0]
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"{s}: {bucket!r} is not a valid GCS bucket name (3 to 63 characters: lowercase "
                             "letters, digits, '-', '_', '.'; starting and ending with a letter or digit)")
        try:
            import gcsfs  # noqa: F401  (epath imports it lazily, with a less helpful message)
        except ImportError as e:
            raise ImportError(f"{s}: gs:// paths need gcsfs: pip install 'moe_jax[gcs]'") from e
    return epath.Path(s)


def join(p: str | os.PathLike, *parts: str) -> str:
    """``os.path.join`` that keeps a URL a URL (``abspath`` would not: do not use it on URLs)."""
    return os.path.join(os.fspath(p), *parts)


def absolute(p: str | os.PathLike) -> str:
    """``os.path.abspath`` for a local path; a URL as given, without a trailing slash (abspath would
    turn ``gs://b/x`` into ``$PWD/gs:/b/x``)."""
    s = os.fspath(p)
    return s.rstrip("/") if is_remote(s) else os.path.abspath(s)


def exists(p: str | os.PathLike) -> bool:
    return path(p).exists() if is_remote(p) else os.path.exists(p)


def isdir(p: str | os.PathLike) -> bool:
    """A local directory, or a ``gs://`` prefix with at least one object under it."""
    return path(p).is_dir() if is_remote(p) else os.path.isdir(p)


def isfile(p: str | os.PathLike) -> bool:
    return path(p).is_file() if is_remote(p) else os.path.isfile(p)


def walk_files(root: str | os.PathLike) -> list[str]:
    """Sorted paths, relative to ``root`` and joined with "/", of every file under it ([] if none)."""
    root = os.fspath(root)
    if is_remote(root):
        fs, base = _fs(root)
        base = base.rstrip("/")
        try:
            found = fs.find(base)
        except FileNotFoundError:
            return []
        return sorted(f[len(base) + 1:] for f in found if f.startswith(base + "/"))
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/") for n in names]
    return sorted(out)


def _fs(url: str):
    """The fsspec filesystem of a URL and the path it uses for it."""
    import fsspec

    path(url)  # checks the scheme, the bucket name and that gcsfs is installed
    fs, p = fsspec.core.url_to_fs(url)
    return fs, p


def file_listing(root: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{relative path ("/"-joined): {"size"[, "md5"]}}`` of every file under ``root`` ({} if none).
    On ``gs://`` one listing gives every size and the md5 GCS computed on upload (``md5Hash``; absent
    for composed objects), not a request per object."""
    root = os.fspath(root)
    if is_remote(root):
        fs, base = _fs(root)
        base = base.rstrip("/")
        try:
            found = fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(base) + 1:]: {"size": int(info["size"]), **({"md5": info["md5Hash"]} if info.get("md5Hash") else {})}
                for p, info in found.items() if p.startswith(base + "/")}
    return {rel: {"size": os.path.getsize(os.path.join(root, rel))} for rel in walk_files(root)}


def size(p: str | os.PathLike) -> int:
    return path(p).stat().length if is_remote(p) else os.path.getsize(p)


def open(p: str | os.PathLike, mode: str = "rb") -> IO:  # noqa: A001  (mirrors builtins.open)
    """A file object for reading (``"rb"``/``"r"``); writes go through ``atomic_write`` (a directory: ``moe_jax.io.integrity.publish``)."""
    if "r" not in mode or "+" in mode:
        raise ValueError(f"storage.open is for reading; write {os.fspath(p)} with atomic_write or publish (moe_jax.io.integrity)")
    return path(p).open(mode) if is_remote(p) else builtins.open(p, mode)


def read_bytes(p: str | os.PathLike) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def read_json(p: str | os.PathLike, *, invalid_ok: bool = False) -> Any:
    """The JSON value in ``p``; None when it does not exist (or, with ``invalid_ok``, is not valid JSON:
    a stamp that is simply rewritten). Invalid JSON otherwise raises ValueError naming the file."""
    try:
        return json.loads(read_bytes(p))
    except FileNotFoundError:
        return None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        if invalid_ok:
            return None
        raise ValueError(f"{os.fspath(p)} is not valid JSON ({e})") from e


def listdir(p: str | os.PathLike) -> list[str]:
    """Sorted names in directory ``p``; [] when it does not exist (object stores hold no empty
    directories, so "missing" and "empty" are the same there)."""
    try:
        if is_remote(p):
            return sorted(c.name for c in path(p).iterdir())
        return sorted(os.listdir(p))
    except FileNotFoundError:
        return []


def makedirs(p: str | os.PathLike) -> None:
    """Creates directory ``p`` and its parents (nothing to do on object storage)."""
    if not is_remote(p):
        os.makedirs(p, exist_ok=True)


def remove(p: str | os.PathLike) -> None:
    """Deletes one file or object (FileNotFoundError if absent)."""
    if is_remote(p):
        if not exists(p):
            raise FileNotFoundError(os.fspath(p))
        path(p).unlink()
    else:
        os.remove(p)


def remove_tree(p: str | os.PathLike) -> None:
    """Deletes a local directory tree or every object under a ``gs://`` prefix. Callers decide first
    that moe_jax wrote it (the tree is never deleted on a guess)."""
    if is_remote(p):
        fs, base = _fs(os.fspath(p))
        if walk_files(p):
            fs.rm(base.rstrip("/"), recursive=True)
    else:
        shutil.rmtree(p)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies one file between any two kinds of path; ``dst`` appears complete or not at all."""
    with open(src, "rb") as f:
        atomic_write(dst, lambda out: shutil.copyfileobj(f, out, _CHUNK))


def upload_tree(local_dir: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies every file under ``local_dir`` to the same relative path under ``dst``; returns them.
    For libraries that only write local directories (HF ``save_pretrained``)."""
    names = walk_files(local_dir)
    for name in names:
        copy_file(os.path.join(local_dir, name), join(dst, name))
    return names


def local_dir(src: str | os.PathLike, names: Sequence[str], key: str, *, cache: str | None = None) -> str:
    """A local directory holding ``names`` from ``src``, for readers that need one (HF tokenizers).

    A local ``src`` is returned as is. A remote one is downloaded once into
    ``<cache>/<key>/`` (``cache``: ``$MOE_JAX_CACHE`` or ``~/.cache/moe_jax/staged``), where
    ``key`` names the content (a digest of the files the caller trusts): a later call with the same
    key reuses it; the directory appears complete (a temp directory renamed into place) or not at
    all. Names missing from ``src`` are skipped.
    """
    if not is_remote(src):
        return os.fspath(src)
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"local_dir: key must be a plain name (a digest), got {key!r}")
    cache = cache or os.environ.get("MOE_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "moe_jax",
                                                                      "staged")
    out = os.path.join(cache, key)
    if os.path.isdir(out):
        return out
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache, prefix=f".{key}.", suffix=".tmp")
    try:
        for name in names:
            if exists(join(src, name)):
                copy_file(join(src, name), os.path.join(tmp, name))
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, out)
        except OSError:  # another process staged the same key first: same content
            if not os.path.isdir(out):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return out


# -- single objects --------------------------------------------------------------------------------

def atomic_write(p: str | os.PathLike, write_fn: Callable[[BinaryIO], Any], mode: int = 0o644) -> None:
    """Calls ``write_fn(f)`` and makes the result visible at ``p`` all at once: locally a temp file
    in the same directory, fsynced, then renamed over ``p`` (created with ``mode``); on GCS one
    upload to ``p`` (an object is visible only complete). A failure leaves ``p`` as it was."""
    if is_remote(p):
        f = path(p).open("wb")  # gcsfs: buffered, or a resumable upload; the object appears on close
        try:
            write_fn(f)
        except BaseException:
            getattr(f, "discard", lambda: None)()  # cancel the upload; never close: that would commit
            f.closed = True
            raise
        f.close()
        return
    _local_publish(os.fspath(p), write_fn, mode, os.replace)


def _local_publish(p: str, write_fn: Callable[[BinaryIO], Any], mode: int, place: Callable[[str, str], Any]) -> None:
    """Writes a temp file beside local ``p`` with ``write_fn``, fsyncs it, and ``place(tmp, p)``s it
    (``os.replace``: over ``p``; ``os.link``: only where nothing is); the temp file never stays."""
    d = os.path.dirname(os.path.abspath(p))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(p) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; outputs are meant to be shared
        place(tmp, p)
    except OSError as e:
        if e.filename is not None:
            raise
        hint = _WRITE_HINTS.get(e.errno, "")
        raise OSError(e.errno, f"{e.strerror or e} (writing {p}{'; ' + hint if hint else ''})", p) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# what a failed local write needs (the OS names neither the file nor the limit: "File too large")
_WRITE_HINTS = {errno.EFBIG: "a file size limit: `ulimit -f` of this shell, or the filesystem's largest file",
                errno.ENOSPC: "the disk is full: free space there, or use another --workdir",
                errno.EDQUOT: "the disk quota is used up: free space there, or use another --workdir"}


def create_exclusive(p: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``p`` only if nothing is there yet, else ``FileExistsError``; ``p`` appears
    complete or not at all. Locally a complete temp file hard-linked to ``p`` (a link never replaces
    a file). On GCS one upload with ``ifGenerationMatch=0`` (create-only, enforced by the service);
    the GCS emulator ignores that precondition, so an existence check before the upload stands in."""
    if is_remote(p):
        if exists(p):
            raise FileExistsError(os.fspath(p))
        fs, key = _fs(os.fspath(p))
        fs.pipe_file(key, data, mode="create")
        return
    _local_publish(os.fspath(p), lambda f: f.write(data), 0o644, os.link)


def atomic_write_bytes(p: str | os.PathLike, data: bytes) -> None:
    atomic_write(p, lambda f: f.write(data))


def atomic_write_json(p: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(p, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


# -- clients ---------------------------------------------------------------------------------------

# read when gcsfs / fsspec are imported: for processes started after ``use_gcs_emulator``
EMULATOR_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "FSSPEC_GCS_TOKEN": "anon"}


def use_gcs_emulator(url: str) -> None:
    """Points every client of this process, and of processes it starts, at a GCS emulator at ``url``
    (``http://host:port``): gcsfs (``STORAGE_EMULATOR_HOST``, anonymous), tensorstore / orbax
    (``TENSORSTORE_GCS_HTTP_URL``). Also turns off gcsfs's gRPC bucket-type probe, which an
    emulator cannot answer (it retries for 60 s on every file it opens)."""
    os.environ.update(EMULATOR_ENV, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url)
    _configure_gcsfs()


def _configure_gcsfs() -> None:
    """fsspec settings for ``gs://``: no cached listings (another host's new objects must be seen);
    with an emulator: anonymous, and the plain GCSFileSystem (no gRPC bucket-type probe)."""
    import fsspec

    conf = fsspec.config.conf.setdefault("gcs", {})
    conf.setdefault("use_listings_cache", False)
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        conf.setdefault("token", "anon")
        for proto in ("gs", "gcs"):
            fsspec.register_implementation(proto, "gcsfs.core.GCSFileSystem", clobber=True)
        epath.backend.fsspec_backend._get_filesystem.cache_clear()  # drop a client made before this


_configure_gcsfs()
# fsspec logs one INFO line per object opened for reading ("AdaptiveReadaheadCache enabled"): at absl's
# INFO level that floods a run's log, and fills the pipe of a parent that does not drain it (blocking the run).
logging.getLogger("fsspec.caching").setLevel(logging.WARNING)
