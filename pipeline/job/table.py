"""The output of a job: a Delta Lake table (delta-rs) of the current rows, and its history.

Every reader that speaks Delta (DuckDB's ``delta_scan``, polars' ``read_delta``, ``deltalake``,
Spark) sees exactly the current rows: one row per (image, method, targets, class rank), one per
failed image, no rule to apply. A run commits its rows every ``part_size`` images; each commit
replaces *all* rows of the images it touches (``write_deltalake(mode="overwrite",
predicate=...)``) with those images' current rows, so the rows a rerun supersedes (changed
content, retried failures, pruned inputs) leave in the same atomic commit that brings their
successors. Older versions stay readable by time travel until ``vacuum``.

Writers never coordinate by hand: a commit that races another writer over the same images fails
Delta's conflict check, and is recomputed from the new snapshot and retried, so no image ever
has two sets of current rows. The run's parameters and record travel in each commit's metadata.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fdpipe.errors import FdpipeError
from fdpipe.job import checksums
from fdpipe.job.current import current_mask
from fdpipe.job.remote import delta_options, output_filesystem
from fdpipe.job.schema import SCHEMA
from fdpipe.job.urls import is_remote, store_message

if TYPE_CHECKING:  # deltalake is imported where a table is opened, not with this module
    from deltalake import DeltaTable, WriterProperties

log = logging.getLogger("fdpipe.job")

COMMIT_KEY = "fdpipe"  # commit metadata: the run record of the run that made the commit
DELTA_LOG = "_delta_log"
COMMIT_RETRIES = 8  # conflicting commits recomputed from the newer snapshot before giving up
DATA_FILE = re.compile(r"^part-\d{5}-[0-9A-Za-z-]+(-c\d{3})?(\.\w+)?\.parquet$")  # delta-rs'
OS_ERROR = re.compile(r"\(os error (\d+)\)")
LEGACY_PART = re.compile(r"^part-(?:s(\d+)of(\d+)-)?(\d+)\.parquet$")  # before the table


class TableError(FdpipeError, ValueError):
    """An output that is not a results table fdpipe can use (legacy layout, foreign table)."""


class StorageError(FdpipeError):
    """The output cannot be written (disk full, file-size limit, I/O error, a store that fails
    a commit): not the input's fault nor a setting's. What was committed before stays; a rerun
    continues."""

    exit_code = 4  # EXIT_STORAGE (job.progress)


class DataFileError(FdpipeError):
    """A data file of the table that cannot be read (truncated, damaged); names the file."""


def legacy_part_files(directory: Path) -> list[Path]:
    """The part files of fdpipe's layout before the table, in name order."""
    if not directory.is_dir():
        return []
    return [p for p in sorted(directory.iterdir()) if LEGACY_PART.match(p.name)]


def sql_strings(values: Iterable[str]) -> str:
    """``'a', 'b''c'``: SQL string literals (quotes doubled; nothing else is special)."""
    return ", ".join("'" + value.replace("'", "''") + "'" for value in values)


class ResultsTable:
    """One output: a Delta table at a local path or an object-store URL. ``options`` are
    fdpipe's storage options (fsspec's names, as for an input; translated for delta-rs)."""

    def __init__(
        self, location: str | os.PathLike[str], options: dict[str, Any] | None = None
    ) -> None:
        text = os.fspath(location)
        self.remote = is_remote(text)
        self.uri = text.rstrip("/") if self.remote else str(Path(text.removeprefix("file://"))
                                                             .absolute())  # fmt: skip
        self.options = options or {}
        self.storage_options = delta_options(self.uri, options) if self.remote else {}
        self.missing: list[Path] = []  # data files the log names that ``dataset`` did not find
        if "%" in self.uri:  # delta-rs decodes "%20" in a path (fsspec would not: two places)
            raise TableError(f"{self.uri}: a '%' in the output's path is misread by the Delta "
                             "library as an escape; choose a path without '%'")  # fmt: skip

    def said(self, exc: Exception) -> str:
        """What a delta-rs error says, in one line (a store's chain of causes; a local error's
        first line, the rest being a Rust backtrace)."""
        return store_message(exc) if self.remote else first_line(exc)

    def exists(self) -> bool:
        """Whether a Delta table is there; a store that cannot be read is a TableError (one
        line), never "no table" (a run would start a second table over the first)."""
        from deltalake import DeltaTable

        try:
            return DeltaTable.is_deltatable(self.uri, self.storage_options or None)
        except Exception as exc:  # local: a FIFO, a file, an unreadable folder: no table there
            if self.remote:
                raise TableError(f"{self.uri}: cannot read the store ({self.said(exc)})") from None
            return False

    def delta(self, version: int | str | None = None) -> DeltaTable:
        """The table at its newest version, or at ``version`` (a number or an ISO timestamp);
        TableError naming the table when its log cannot be read or the version does not exist."""
        from deltalake import DeltaTable

        try:
            table = DeltaTable(self.uri, storage_options=self.storage_options or None)
        except Exception as exc:  # delta-rs reports a damaged log with its own backtrace
            raise TableError(f"{self.uri}: unreadable Delta log ({self.said(exc)})") from None
        if version is None:
            return table
        newest = table.version()
        if isinstance(version, bool) or not isinstance(version, int | str):
            raise TableError(f"version {version!r}: give a version number or an ISO timestamp")
        if isinstance(version, int):
            if not 0 <= version <= newest:
                raise TableError(f"{self.uri} has versions 0 to {newest}, not {version}")
            table.load_as_version(version)
            return table
        try:
            when = datetime.fromisoformat(version.replace("Z", "+00:00"))
        except ValueError:
            raise TableError(f"version {version!r}: not an ISO timestamp") from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        created = datetime.fromtimestamp(table.history()[-1]["timestamp"] / 1000, UTC)
        if when < created:
            raise TableError(f"{self.uri} did not exist at {version} (created {created:%c} UTC)")
        table.load_as_version(when)
        return table

    def legacy_parts(self) -> list[Path]:
        """Part files of fdpipe's earlier layout in a local output that is not a table."""
        if self.remote or self.exists():
            return []
        return legacy_part_files(Path(self.uri))

    def refuse_legacy(self) -> None:
        """TableError for what fdpipe must not read or write as its table: the part layout of
        an earlier fdpipe, or a Delta table fdpipe did not write (its rows are someone else's)."""
        if self.legacy_parts():
            raise TableError(
                f"{self.uri} holds part files of an earlier fdpipe (no Delta table): convert it "
                f"with `fdpipe migrate {self.uri} NEW_OUTPUT`, or choose another --output"
            )
        if self.exists() and not self.commits():
            raise TableError(
                f"{self.uri} is a Delta table fdpipe did not write: choose another --output"
            )

    # -- reading ------------------------------------------------------------------------------

    def dataset(self, version: int | str | None = None) -> ds.Dataset:
        """The current rows (of ``version``) as a pyarrow dataset: filter and project lazily.

        A local table's files are opened by pyarrow itself: delta-rs' own pyarrow dataset
        (``to_pyarrow_dataset``) aborted about one process in ten at interpreter exit
        ("terminate called without an active exception", exit 134), after a successful run."""
        table = self.delta(version)
        if self.remote:  # through fsspec, with the options the run records are read with
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            fs, paths = self.stored_files(table)
            self.missing = [Path(p) for p in self.absent(fs, paths)]
            for path in self.missing:  # deleted by hand: left out, as for a local table
                log.warning("%s: data file missing: skipped, its images are left out (`fdpipe "
                            "explain` again explains them)", path)  # fmt: skip
            paths = [p for p in paths if Path(p) not in self.missing]
            handler = FSSpecHandler(fs)  # type: ignore[abstract]  # (the stubs lag pyarrow)
            return ds.dataset(paths, schema=SCHEMA, format="parquet",
                              filesystem=PyFileSystem(handler))  # fmt: skip
        files, self.missing = [], []
        for path in (local_path(uri) for uri in self.listed(table)):
            if regular_file(path):
                files.append(str(path))
            else:  # deleted by hand (or a FIFO, a link there): left out, ``explain`` redoes it
                log.warning("%s: data file missing or not a regular file: skipped, its "
                            "images are left out (`fdpipe explain` again explains them)",
                            path)  # fmt: skip
                self.missing.append(path)
        return ds.dataset(files, schema=SCHEMA, format="parquet")

    def rows(
        self,
        columns: list[str] | None = None,
        images: Iterable[str] | None = None,
        version: int | str | None = None,
    ) -> pa.Table:
        """Current rows, optionally only ``columns`` and the rows of ``images``."""
        if not self.exists():
            return SCHEMA.empty_table().select(columns) if columns else SCHEMA.empty_table()
        dataset = self.dataset(version)
        where = None
        if images is not None:
            where = pc.field("image_path").isin(pa.array(list(images), pa.string()))
        present = [c for c in columns if c in dataset.schema.names] if columns else None
        return dataset.to_table(columns=present, filter=where)

    def data_files(self, version: int | None = None) -> list[Path]:
        """The local data files of a version (of the newest one by default)."""
        uris = self.listed(self.delta(version)) if self.exists() else []
        return [local_path(uri) for uri in uris]

    def stored_files(self, table: DeltaTable) -> tuple[Any, list[str]]:
        """A store's filesystem and the keys of ``table``'s data files (delta-rs' URIs are
        percent-encoded, a space is %20; fsspec takes the plain key)."""
        fs, _ = output_filesystem(self.uri, self.options)
        return fs, [fs._strip_protocol(unquote(uri)) for uri in self.listed(table)]

    def absent(self, fs: Any, paths: list[str]) -> list[str]:
        """Of ``paths`` (data files at the table's top level), those the store no longer holds:
        one listing, not a request a file."""
        if not paths:
            return []
        held = set(fs.ls(fs._strip_protocol(self.uri), detail=False, refresh=True))
        return [p for p in paths if p not in held]

    def listed(self, table: DeltaTable) -> list[str]:
        """The URIs of ``table``'s data files, each checked to lie in the table's own folder: a
        log naming a file elsewhere (``../``, an absolute path: tampered, or not fdpipe's) is
        refused, so that no reader reads, and no repair moves, a file outside the table."""
        uris = table.file_uris()
        if self.remote:
            prefix = self.uri.rstrip("/") + "/"
            outside = [u for u in map(unquote, uris) if not u.startswith(prefix) or "/../" in u]
        else:
            root = os.path.normpath(os.path.abspath(self.uri))
            outside = [u for u in uris if os.path.dirname(os.path.normpath(local_path(u))) != root]
        if outside:
            raise TableError(
                f"{self.uri}: its log lists a data file outside the table ({unquote(outside[0])}):"
                " not a table fdpipe wrote"
            )
        return uris

    def set_aside_damaged(self, record: dict[str, object]) -> list[Path]:
        """Data files whose footer cannot be read (a torn copy, a truncated disk) or whose
        content differs from the sha256 recorded when fdpipe wrote them (altered pages behind an
        intact footer, ``fdpipe.job.checksums``) are renamed to a hidden ``.<name>.unreadable``
        or ``.<name>.damaged`` (kept for inspection) and removed from the table in one commit:
        their images have no rows any more, so the run explains them again."""
        if not self.exists():
            return []
        damaged: list[Path] = []
        if self.remote:  # no renames on a store: only files deleted by hand are found there
            fs, paths = self.stored_files(self.delta())
            damaged = [Path(p) for p in self.absent(fs, paths)]
            for path in damaged:
                log.warning("%s: data file missing: removed from the table, its images are "
                            "explained again", path)  # fmt: skip
        for path in [] if self.remote else self.data_files():
            if not os.path.lexists(path):
                log.warning("%s: data file missing: removed from the table, its images are "
                            "explained again", path)  # fmt: skip
                damaged.append(path)
                continue
            try:
                if not regular_file(path):  # a FIFO would block the read, a link lead away
                    raise OSError("not a regular file")
                pq.read_metadata(path)
                reason, kind = checksums.mismatch(path), "damaged"
                if not checksums.recorded(path):  # older than checksums, or a killed run's:
                    pq.ParquetFile(path).read()  # decoded once, then checked by its sha256
                    checksums.seal_file(path.parent, path.name)
            except (pa.ArrowException, OSError) as exc:
                reason, kind = str(exc), "unreadable"
            if reason is not None:
                aside = path.with_name(f".{path.name}.{kind}")
                os.replace(path, aside)
                checksums.forget(Path(self.uri), [path.name])
                log.warning("%s: %s data file (%s); set aside as %s, its images are explained "
                            "again", path, kind, reason, aside.name)  # fmt: skip
                damaged.append(path)
        if damaged:
            from deltalake import CommitProperties

            metadata = {COMMIT_KEY: json.dumps(record | {"repaired": len(damaged)}, default=str)}
            self.delta().repair(commit_properties=CommitProperties(custom_metadata=metadata))
        return damaged

    def commits(self) -> list[dict[str, object]]:
        """The run record of every fdpipe commit, newest first."""
        if not self.exists():
            return []
        found = []
        for entry in self.delta().history():
            raw = entry.get(COMMIT_KEY)
            if isinstance(raw, str):
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    found.append(record | {"version": entry.get("version")})
        return found

    def metadata(self) -> dict[str, object]:
        """The newest run's record (model, layer, preprocessing, input root...) among the
        commits (upkeep commits such as ``compact`` carry none); {} when none."""
        runs = [c for c in self.commits() if "params" in c and "run" in c]
        return runs[0] if runs else {}

    # -- writing ------------------------------------------------------------------------------

    def commit(self, rows: pa.Table, record: dict[str, object], prune: Iterable[str] = ()) -> int:
        """Atomically make ``rows`` current, drop the rows they supersede and every row of the
        images in ``prune`` or with a ``pruned`` row; returns the new version."""
        from deltalake import CommitProperties, write_deltalake
        from deltalake.exceptions import CommitFailedError

        rows = rows.cast(SCHEMA)
        tombstone = pc.equal(rows["status"], pa.scalar("pruned"))
        gone = set(image_keys(rows.filter(tombstone))) | set(prune)
        rows = rows.filter(pc.invert(tombstone))
        touched = sorted(set(image_keys(rows)) | gone)
        if not touched:
            return -1
        properties = CommitProperties(custom_metadata={COMMIT_KEY: json.dumps(record, default=str)})
        start = self.version()
        for attempt in range(COMMIT_RETRIES):
            exists = self.exists()
            if exists:
                before = self.rows(images=touched).cast(SCHEMA)
                combined = pa.concat_tables([before, rows])
                keep = combined.filter(current_mask(combined))
                dropped = pc.is_in(keep["image_path"], pa.array(sorted(gone), pa.string()))
                keep = keep.filter(pc.invert(dropped))
            else:
                keep = rows
            try:
                if exists:
                    write_deltalake(
                        self.uri,
                        keep,
                        mode="overwrite",
                        predicate=f"image_path IN ({sql_strings(touched)})",
                        storage_options=self.storage_options or None,
                        commit_properties=properties,
                        writer_properties=writer_properties(),
                        schema_mode="merge",  # a table written before a column was added
                    )
                else:
                    write_deltalake(
                        self.uri,
                        keep,
                        mode="append",
                        storage_options=self.storage_options or None,
                        commit_properties=properties,
                        writer_properties=writer_properties(),
                        schema_mode="merge",  # a table written before a column was added
                    )
            except CommitFailedError as exc:  # another writer committed first: recompute
                log.info("commit conflict (attempt %d): %s", attempt + 1, str(exc)[:200])
                continue
            except Exception as exc:  # delta-rs reports the file system's errors as text
                if self.remote:
                    raise StorageError(
                        f"cannot commit to {self.uri}: {store_message(exc)}; "
                        "what was committed is kept: rerun to continue"
                    ) from None
                raise os_error(exc) or exc from None
            return self.seal(start)
        raise TableError(f"{self.uri}: could not commit after {COMMIT_RETRIES} conflicts")

    def delete(self, images: Iterable[str] | None, record: dict[str, object]) -> None:
        """Remove the rows of ``images`` (every row when None) in one commit."""
        if not self.exists():
            return
        from deltalake import CommitProperties

        properties = CommitProperties(custom_metadata={COMMIT_KEY: json.dumps(record, default=str)})
        table = self.delta()
        start = table.version()
        if images is None:
            table.delete(commit_properties=properties)
        elif keys := sorted(images):
            predicate = f"image_path IN ({sql_strings(keys)})"
            table.delete(predicate, commit_properties=properties)  # rewrites the files it cuts
        self.seal(start)

    # -- maintenance --------------------------------------------------------------------------

    def compact(self, record: dict[str, object]) -> dict[str, object]:
        """Small files into large ones, rows sorted by image (Z-order on ``image_path``): one
        commit that changes no row."""
        from deltalake import CommitProperties

        for path in [] if self.remote else self.data_files():  # never copy damage on
            if (reason := checksums.mismatch(path)) is not None:
                raise TableError(
                    f"{path}: {reason}: damaged; run `fdpipe explain` on this output again to set "
                    "it aside and redo its images, then compact"
                )
        start = self.version()
        try:
            found = self.delta().optimize.z_order(
                ["image_path"],
                writer_properties=writer_properties(),
                commit_properties=CommitProperties(
                    custom_metadata={COMMIT_KEY: json.dumps(record, default=str)}
                ),
            )
        except Exception as exc:  # a damaged data file, a read-only folder
            raise TableError(f"{self.uri}: compact failed ({self.said(exc)})") from None
        self.seal(start)
        return found

    def vacuum(self, retain_hours: int, *, dry_run: bool = False) -> list[str]:
        """Delete the files no version newer than ``retain_hours`` ago needs (time travel to
        older versions ends there); returns them."""
        table = self.delta()
        try:
            removed = table.vacuum(
                retention_hours=retain_hours, dry_run=dry_run, enforce_retention_duration=False
            )
            # Files no commit ever named (a run killed between a data file and its commit):
            # only data files of the table's own naming, never a user's file beside them.
            unnamed = table.vacuum(
                retention_hours=retain_hours,
                dry_run=True,
                enforce_retention_duration=False,
                full=True,
            )
        except Exception as exc:  # a read-only folder, a damaged log
            raise TableError(f"{self.uri}: vacuum failed ({self.said(exc)})") from None
        # delta-rs deletes nothing outside the table, but lists what a tampered log names there
        removed = [f for f in removed if "/" not in f]
        orphans = [f for f in unnamed if f not in removed and DATA_FILE.match(Path(f).name)]
        if dry_run:
            pass
        elif self.remote:
            if orphans:
                fs, root = output_filesystem(self.uri, self.options)
                fs.rm([f"{root}/{name}" for name in orphans])
        else:
            for name in orphans:
                (Path(self.uri) / name).unlink(missing_ok=True)
            checksums.forget(Path(self.uri), checksums.orphans(Path(self.uri)))
        return [*removed, *orphans]

    def version(self) -> int:
        """The newest version; -1 before the first commit."""
        return self.delta().version() if self.exists() else -1

    def seal(self, start: int) -> int:
        """Record the checksums of the data files committed since version ``start`` (this
        writer's, and any a racing writer added meanwhile); returns the newest version."""
        newest = self.version()
        if not self.remote:
            root = Path(self.uri)
            checksums.seal(root, root / DELTA_LOG, range(start + 1, newest + 1))
        return newest


def regular_file(path: Path) -> bool:
    """Whether ``path`` is a regular file itself (not a link, a FIFO, a device or missing)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def local_path(uri: str) -> Path:
    """A local data file's path from delta-rs' URI (percent-encoded: spaces, non-ASCII)."""
    return Path(unquote(uri.removeprefix("file://")))


def first_line(exc: Exception) -> str:
    """The first line of a delta-rs error (the rest is a Rust backtrace)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def os_error(exc: Exception) -> OSError | None:
    """The OSError behind a delta-rs error ("... (os error 28)"), so that a full disk or a
    file-size limit is told apart from a bad table; None when there is none."""
    if isinstance(exc, OSError):
        return exc
    found = OS_ERROR.search(str(exc))
    if found is None:
        return None
    code = int(found[1])
    return OSError(code, os.strerror(code))


def image_keys(rows: pa.Table) -> list[str]:
    """The image paths of ``rows`` (a non-null column)."""
    return [str(key) for key in rows["image_path"].to_pylist()]


def writer_properties() -> WriterProperties:
    from deltalake import WriterProperties

    return WriterProperties(compression="ZSTD")


def open_results(
    location: str | os.PathLike[str], options: dict[str, Any] | None = None
) -> ResultsTable:
    """An output that readers can use: TableError naming what it is instead (nothing, the part
    layout of an earlier fdpipe, a Delta table fdpipe did not write)."""
    table = ResultsTable(location, options)
    if not table.exists():
        table.refuse_legacy()
        raise TableError(f"{location} holds no fdpipe results table (no {DELTA_LOG}/)")
    if not table.metadata():
        raise TableError(f"{location} is a Delta table without fdpipe's run records")
    return table


__all__ = [
    "COMMIT_KEY",
    "DELTA_LOG",
    "LEGACY_PART",
    "DataFileError",
    "ResultsTable",
    "StorageError",
    "TableError",
    "image_keys",
    "legacy_part_files",
    "open_results",
    "sql_strings",
]
