"""Which text names an object-store location rather than a local path, and what a store's
error says in one line: torch-free, so that the table commands (``status``, ``compact``,
``vacuum``) and the sources both ask it."""

from __future__ import annotations

import re

TABLE_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})  # delta-rs writes
DECORATION = re.compile(r"\x1b\[[0-9;]*m|↳")  # delta-rs' coloured chain of causes
NO_CREDENTIALS = (
    "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile), or "
    "--storage-option key=... secret=...; anon=true for a public bucket"
)


def scheme_of(text: str) -> str | None:
    """``"s3"`` for ``s3://bucket/key``; None for a local path (a Windows drive is not a URL)."""
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.isascii() and head.isidentifier() else None


def is_remote(text: str) -> bool:
    return scheme_of(text) not in (None, "file")


def table_only(key: str) -> bool:
    """A storage option in the table library's names (``AWS_S3_ALLOW_UNSAFE_RENAME``,
    ``aws_region``, ``azure_storage_account_name``...): fsspec's filesystems take none of them."""
    return key.upper().startswith(("AWS_", "AZURE_", "GOOGLE_"))


def store_message(exc: BaseException) -> str:
    """A store client's error in one line (botocore, aiohttp, gcsfs and delta-rs share no base
    class): a missing credential named with its fix, delta-rs' colours and arrows dropped."""
    text = " ".join(DECORATION.sub(" ", str(exc)).split()) or type(exc).__name__
    if type(exc).__name__ == "NoCredentialsError" or "169.254.169.254" in text:
        return NO_CREDENTIALS  # botocore's own, or object_store asking the instance metadata
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["TABLE_SCHEMES", "is_remote", "scheme_of", "store_message", "table_only"]
