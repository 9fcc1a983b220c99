"""An output on an object store (``-o s3://bucket/prefix``; ``gs://``, ``az://``): the options
delta-rs takes for its table, and the check a run makes before any work.

fdpipe's storage options are fsspec's (``--storage-option key=value``, as for an input) plus the
standard environment (``AWS_*``); the table library (delta-rs, through Rust's ``object_store``)
names them differently, so ``delta_options`` translates them, in one place. The run records
beside the table are written through fsspec with the options as given.

There is no lock file on a store: two commits are kept apart by Delta's optimistic concurrency,
which on S3 rests on *conditional put* (``If-None-Match: *``: the second writer of a commit
number is refused, recomputes and retries). AWS S3 honours it since 2024, as do MinIO, R2 and
SeaweedFS; a store that ignores it would let two writers overwrite each other's commit, so
``check_output`` probes it and refuses such a store unless the user opts in to one writer at a
time with ``AWS_S3_ALLOW_UNSAFE_RENAME=true`` (delta-rs' own name for that promise).
"""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any

from fdpipe.job.urls import TABLE_SCHEMES, scheme_of, store_message

log = logging.getLogger("fdpipe.job")

UNSAFE = "AWS_S3_ALLOW_UNSAFE_RENAME"
# fsspec's option (s3fs, gcsfs, adlfs) -> object_store's name for it, by the scheme's family
S3 = {
    "key": "aws_access_key_id",
    "secret": "aws_secret_access_key",
    "token": "aws_session_token",
    "endpoint_url": "aws_endpoint",
    "region_name": "aws_region",
}
GCS = {"token": "google_service_account"}
AZURE = {
    "account_name": "azure_storage_account_name",
    "account_key": "azure_storage_account_key",
    "sas_token": "azure_storage_sas_token",
    "connection_string": "azure_storage_connection_string",
}
TRANSLATED = {"s3": S3, "s3a": S3, "gs": GCS, "gcs": GCS, "az": AZURE, "abfs": AZURE,
              "abfss": AZURE}  # fmt: skip
# A store that does not answer is an error in seconds, not after object_store's 3 minutes.
PROMPT = {"connect_timeout": "5s", "max_retries": "2", "retry_timeout": "15s"}


def delta_options(url: str, options: dict[str, Any] | None) -> dict[str, str]:
    """fdpipe's (fsspec) storage options as delta-rs takes them; keys it already knows (such as
    ``AWS_S3_ALLOW_UNSAFE_RENAME`` or ``aws_region``) pass as they are."""
    found: dict[str, str] = dict(PROMPT)
    names = TRANSLATED.get(scheme_of(url) or "", {})
    flat = dict(options or {})
    flat |= flat.pop("client_kwargs", None) or {}
    for key, value in flat.items():
        if isinstance(value, dict):
            continue  # another fsspec layer's settings (config_kwargs): nothing delta-rs reads
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if key == "anon":
            found["aws_skip_signature"] = text
            continue
        found[names.get(key, key)] = text
    if scheme_of(url) in {"s3", "s3a"}:
        endpoint = (
            found.get("aws_endpoint")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or (os.environ.get("AWS_ENDPOINT_URL"))
        )
        if endpoint:
            found["aws_endpoint"] = endpoint
            if endpoint.startswith("http://"):  # the user chose a plain-HTTP endpoint
                found.setdefault("aws_allow_http", "true")
    return found


def unsafe_allowed(options: dict[str, Any] | None) -> bool:
    value = (options or {}).get(UNSAFE, os.environ.get(UNSAFE, ""))
    return str(value).lower() in {"1", "true", "yes"}


def output_filesystem(url: str, options: dict[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of an output, made afresh (fsspec reuses one made with the same
    options, whose credentials may be from an environment that has changed since)."""
    from fdpipe.job.sources.store import filesystem

    return filesystem(url, (options or {}) | {"skip_instance_cache": True})


def check_output(url: str, options: dict[str, Any] | None) -> None:
    """Before any work: the scheme is one the table library writes, the store answers, the
    bucket exists, the credential may write and delete there, and (S3) the store honours
    conditional put. ConfigError (exit 2) naming what is wrong."""
    from fdpipe.job.config import ConfigError

    scheme = scheme_of(url)
    if scheme not in TABLE_SCHEMES:
        known = ", ".join(sorted(f"{s}://" for s in TABLE_SCHEMES))
        raise ConfigError(f"--output {url}: the results table is written to {known} or a folder")
    fs, root = output_filesystem(url, options)
    bucket = root.split("/", 1)[0]
    try:
        fs.info(bucket)  # fdpipe creates no bucket (some servers would, on the first write)
    except FileNotFoundError:
        raise ConfigError(f"--output {url}: no such bucket or container {bucket}") from None
    except PermissionError:
        pass  # a credential that may write objects but not look at the bucket
    except Exception as exc:  # botocore, aiohttp, azure: no common base class
        raise ConfigError(f"--output {url}: the store cannot be reached ({store_message(exc)})"
                          ) from None  # fmt: skip
    probe = f"{root.rstrip('/')}/_runs/.probe-{secrets.token_hex(6)}"
    try:
        fs.pipe_file(probe, b"fdpipe", **({"mode": "create"} if scheme in {"s3", "s3a"} else {}))
    except PermissionError:
        raise ConfigError(f"--output {url}: the credential may not write there") from None
    except Exception as exc:
        raise ConfigError(f"--output {url}: the store cannot be written ({store_message(exc)})"
                          ) from None  # fmt: skip
    try:
        honoured = scheme not in {"s3", "s3a"} or refuses_second_create(fs, probe)
    except Exception as exc:  # as above
        raise ConfigError(f"--output {url}: the store cannot be written ({store_message(exc)})"
                          ) from None  # fmt: skip
    finally:
        try:
            fs.rm_file(probe)
        except Exception as exc:  # the same: a credential without delete
            raise ConfigError(f"--output {url}: the credential may not delete there "
                              f"({store_message(exc)}); vacuum needs it") from None  # fmt: skip
    if not honoured and not unsafe_allowed(options):
        raise ConfigError(
            f"--output {url}: this store ignores conditional writes (If-None-Match), so two "
            "writers could overwrite each other's commit; if you run one writer at a time, say "
            f"so with --storage-option {UNSAFE}=true"
        )
    if not honoured:
        log.warning("%s: the store ignores conditional writes; %s: one writer at a time",
                    url, UNSAFE)  # fmt: skip


def refuses_second_create(fs: Any, path: str) -> bool:
    """Whether a second exclusive create of ``path`` is refused (what commits rely on), and the
    first one's bytes stay."""
    try:
        fs.pipe_file(path, b"again", mode="create")
    except FileExistsError:
        pass
    except OSError as exc:  # s3fs reports 412 PreconditionFailed as a plain OSError
        if "condition" not in str(exc).lower():
            raise
    else:
        return False
    return bytes(fs.cat_file(path)) == b"fdpipe"


__all__ = [
    "check_output",
    "delta_options",
    "output_filesystem",
    "unsafe_allowed",
]
