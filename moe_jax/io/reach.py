"""Fail fast when a ``gs://`` workdir cannot be reached: one bounded request before any stage runs.

gcsfs retries a failed request 6 times with exponential backoff (about 33 s per request without a
network), and a stage makes several requests in a row, so a run without a network or credentials
used to hang for minutes and end on a raw DNS error. ``check_reachable`` makes the first request
itself, once, with a deadline for the whole of it (credentials, DNS, connect, answer): listing at
most one object under the prefix, which needs only the object permissions a workdir needs anyway
(``roles/storage.objectAdmin`` has no ``storage.buckets.get``). Its error names what was tried (the
emulator at ``STORAGE_EMULATOR_HOST``, or Google's application-default credentials chain) and what
to set. After it succeeds the usual clients (gcsfs with its retries, tensorstore) take over.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Any

from moe_jax.io import storage

TIMEOUT_S = 8.0  # the whole probe; a healthy bucket answers in well under a second
GCS_ENDPOINT = "https://storage.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
EMULATOR_FIX = "for a local emulator set STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT"
CREDENTIALS_FIX = ("on a GCP VM or TPU VM give it a service account with roles/storage.objectAdmin on the bucket; "
                   "elsewhere run `gcloud auth application-default login` or set "
                   "GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json; " + EMULATOR_FIX)


class StorageUnreachableError(OSError):
    """A ``gs://`` path cannot be used: no network, no credentials, no bucket or no access."""


def emulator_host() -> str | None:
    """The emulator endpoint of ``STORAGE_EMULATOR_HOST`` as gcsfs reads it (http:// added), or None."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if host in ("", "default"):
        return None
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def check_reachable(url: str, timeout_s: float = TIMEOUT_S) -> None:
    """Raises ``StorageUnreachableError`` within about ``timeout_s`` if ``gs://bucket/prefix`` cannot be
    listed; a no-op for a local path."""
    if not storage.is_remote(url):
        return
    storage.path(url)  # scheme, bucket name, gcsfs installed
    bucket, _, prefix = url[len("gs://"):].partition("/")
    outcome: dict[str, Any] = {}
    probe = threading.Thread(target=_probe, args=(url, bucket, prefix, timeout_s, outcome), daemon=True)
    probe.start()
    probe.join(timeout_s)  # DNS resolution has no timeout of its own: the thread is left behind, a daemon
    if probe.is_alive():
        raise StorageUnreachableError(f"{url}: no answer within {timeout_s:g} s from {outcome.get('tried', '?')}; "
                                      f"{outcome.get('fix', CREDENTIALS_FIX)}")
    if "error" in outcome:
        raise outcome["error"]


def _probe(url: str, bucket: str, prefix: str, timeout_s: float, outcome: dict[str, Any]) -> None:
    try:
        endpoint, headers, who = _client(url, outcome)
        query = urllib.parse.urlencode({"maxResults": 1, "prefix": prefix.rstrip("/") + "/" if prefix else ""})
        request = urllib.request.Request(
            f"{endpoint}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:
                json.loads(answer.read())
        except urllib.error.HTTPError as e:
            raise _refusal(url, bucket, e.code, e.read()[:300].decode("utf-8", "replace"), who, outcome) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise StorageUnreachableError(f"{url}: could not reach {outcome['tried']} ({type(reason).__name__}: "
                                          f"{reason}); {outcome['fix']}") from None
    except BaseException as e:  # handed to the caller's thread
        outcome["error"] = e


def _client(url: str, outcome: dict[str, Any]) -> tuple[str, dict[str, str], str]:
    """``(endpoint, headers, who)`` the clients would use; records what is tried in ``outcome``."""
    emulator = emulator_host()
    if emulator:
        outcome.update(tried=f"the GCS emulator at STORAGE_EMULATOR_HOST={os.environ['STORAGE_EMULATOR_HOST']}",
                       fix="start the emulator there, or unset STORAGE_EMULATOR_HOST to use Google Cloud Storage")
        return emulator, {}, "anonymous (emulator)"
    outcome.update(tried=f"{GCS_ENDPOINT} (STORAGE_EMULATOR_HOST is not set)",
                   fix="check the network, proxy and DNS of this machine; " + CREDENTIALS_FIX)
    token = _gcsfs_token()
    if token == "anon":
        return GCS_ENDPOINT, {}, "anonymous (gcsfs token 'anon')"
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests

    if isinstance(token, str) and os.path.isfile(token):  # gcsfs's token: a credentials file
        tried = f"the credentials file {token} (gcsfs token, FSSPEC_GCS_TOKEN)"
    else:
        tried = ("Google's application-default credentials chain: GOOGLE_APPLICATION_CREDENTIALS "
                 f"({os.environ.get('GOOGLE_APPLICATION_CREDENTIALS') or 'not set'}), gcloud's application-default "
                 "login, the GCE / TPU VM metadata server")
    outcome.update(tried=tried, fix=CREDENTIALS_FIX)
    try:
        if isinstance(token, str) and os.path.isfile(token):
            with warnings.catch_warnings():  # deprecated for files from untrusted sources: this is the user's own
                warnings.simplefilter("ignore", DeprecationWarning)
                creds, _ = google.auth.load_credentials_from_file(token, scopes=[SCOPE])
        else:
            creds, _ = google.auth.default(scopes=[SCOPE])
        creds.refresh(google.auth.transport.requests.Request())
    except google.auth.exceptions.GoogleAuthError as e:
        raise StorageUnreachableError(f"{url}: no usable Google credentials (tried {tried}: "
                                      f"{str(e).splitlines()[0]}); {CREDENTIALS_FIX}") from None
    outcome.update(tried=f"{GCS_ENDPOINT} (STORAGE_EMULATOR_HOST is not set)",
                   fix="check the network, proxy and DNS of this machine, or " + EMULATOR_FIX)
    who = getattr(creds, "service_account_email", None) or getattr(creds, "account", None) or "your credentials"
    return GCS_ENDPOINT, {"Authorization": f"Bearer {creds.token}"}, str(who)


def _gcsfs_token() -> Any:
    """The token gcsfs would be given: ``FSSPEC_GCS_TOKEN``, else fsspec's ``gcs`` config (None: its default chain)."""
    import fsspec
    return os.environ.get("FSSPEC_GCS_TOKEN") or fsspec.config.conf.get("gcs", {}).get("token")


def _refusal(url: str, bucket: str, code: int, body: str, who: str, outcome: dict[str, Any]) -> StorageUnreachableError:
    where = outcome["tried"]
    if code == 404:
        create = ("start the emulator with --default-bucket=" + bucket if emulator_host()
                  else f"create it (gcloud storage buckets create gs://{bucket}) or correct --workdir")
        return StorageUnreachableError(f"{url}: bucket {bucket} does not exist (asked {where}); {create}")
    if code in (401, 403):
        return StorageUnreachableError(f"{url}: access denied (HTTP {code}) listing objects as {who} at {where}; "
                                       f"grant roles/storage.objectAdmin on gs://{bucket} to {who}, or use "
                                       f"other credentials ({CREDENTIALS_FIX})")
    return StorageUnreachableError(f"{url}: {where} answered HTTP {code} to a listing ({body.strip()[:200]}); "
                                   f"{outcome['fix']}")
