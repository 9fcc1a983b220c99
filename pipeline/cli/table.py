"""``fdpipe status``, ``compact``, ``vacuum`` and ``migrate``: the results table's upkeep.

A nightly job reruns ``explain`` into one output; these keep that output readable and small
(``compact`` merges the small files each commit leaves, ``vacuum`` deletes what no kept version
needs), tell monitoring how the night went over every shard (``status``), and convert an output
of an earlier fdpipe (part files) into a table (``migrate``). None of them imports torch.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from fdpipe.cli.options import ConfigurationError, OutputLocation, storage_option

if TYPE_CHECKING:
    from fdpipe.job.table import ResultsTable

DURATION = re.compile(r"^(\d+)\s*([dhm])$")
UNITS = {"d": 24.0, "h": 1.0, "m": 1 / 60}
MAX_HOURS = 100 * 366 * 24


def hours(text: str, option: str) -> int:
    """'7d', '12h', '90m' -> whole hours (rounded down; '0' and '0h' mean none kept)."""
    match = DURATION.match(text.strip().lower()) if text.strip() != "0" else DURATION.match("0h")
    if match is None or len(match[1]) > 7:
        raise ConfigurationError(f"{option} {text!r}: give a duration such as 7d, 12h or 90m")
    found = int(int(match[1]) * UNITS[match[2]])
    if found > MAX_HOURS:
        raise ConfigurationError(f"{option} {text!r}: at most 100 years")
    return found


def results(output: Path | str, options: dict[str, Any]) -> ResultsTable:
    from fdpipe.job.table import open_results

    return open_results(output, options)  # TableError, a one-line FdpipeError, when it is none


# a folder, or an object-store URL (str); a missing folder is named by each command
output_argument = click.argument("output", type=OutputLocation(exists=False))


@click.command()
@output_argument
@click.option(
    "--window",
    default="20h",
    show_default=True,
    help="Runs that started this long before the newest one belong to its night.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@storage_option
def status(output: Path | str, window: str, as_json: bool, storage_options: dict[str, Any]) -> None:
    """One status for the newest night of OUTPUT over all its shards, from the run records.

    Exit 0: every shard completed and every image was explained; 1: some images failed; 4: a
    shard is missing, still running, interrupted or was refused, or the newest run record
    cannot be read. Every unreadable record is named.
    """
    from fdpipe.job.record import record_files
    from fdpipe.job.status import night_status

    if isinstance(output, str):  # a store: a prefix without records, or one not reached
        results(output, storage_options)
        if not record_files(output, storage_options):
            raise ConfigurationError(f"{output} holds no run records (_runs/)")
    elif not (output / "_runs").is_dir():
        raise ConfigurationError(f"{output} holds no run records (_runs/): not an explain output")
    night = night_status(output, timedelta(hours=hours(window, "--window")), storage_options)
    if as_json:
        click.echo(json.dumps(night.as_json(), indent=2))
    else:
        for shard in night.shards:
            index, count = shard.shard
            click.echo(
                f"shard {index}/{count}: {shard.state:<10} run {shard.run_id or '-'}"
                f"  ok {shard.ok}  failed {shard.failed}"
            )
        for unreadable in night.unreadable:
            click.echo(f"unreadable run record: {unreadable}")
        click.echo(f"{output}: {night.state} (exit {night.exit_code})")
    raise SystemExit(night.exit_code)


@click.command()
@output_argument
@storage_option
def compact(output: Path | str, storage_options: dict[str, Any]) -> None:
    """Merge OUTPUT's small files into large ones, rows sorted by image (one commit that
    changes no row; readers see the same rows before and after)."""
    table = results(output, storage_options)
    found = table.compact({"operation": "compact"})
    added, removed = found.get("numFilesAdded", 0), found.get("numFilesRemoved", 0)
    click.echo(f"{output}: {removed} file(s) rewritten into {added}")


@click.command()
@output_argument
@click.option(
    "--retain",
    default="7d",
    show_default=True,
    help="Keep every file a version of this age or newer needs (time travel ends there).",
)
@click.option("--dry-run", is_flag=True, help="List the files it would delete, delete none.")
@storage_option
def vacuum(output: Path | str, retain: str, dry_run: bool, storage_options: dict[str, Any]) -> None:
    """Delete the data files of OUTPUT that no version newer than --retain needs."""
    table = results(output, storage_options)
    files = table.vacuum(hours(retain, "--retain"), dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{output}: {verb} {len(files)} file(s)")


@click.command()
@click.argument("old", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("new", type=OutputLocation(exists=False))
@click.option("--history", is_flag=True, help="Replay every run (time travel to each).")
def migrate(old: Path, new: Path | str, history: bool) -> None:
    """Convert OLD, an output of an earlier fdpipe (part files), into the results table NEW.

    NEW must not be a table yet; OLD is only read. Without --history NEW holds OLD's current
    rows in one version per part; with it, every run's rows are committed in run order, so
    each earlier run stays reachable by time travel.
    """
    from fdpipe.job.legacy import migrate as convert
    from fdpipe.job.table import ResultsTable

    if isinstance(new, str):  # the old layout is local; so is its conversion
        raise ConfigurationError(f"NEW {new}: migrate writes a local folder (then explain into "
                                 "the store, or copy the folder there whole)")  # fmt: skip
    if new.exists() and (not new.is_dir() or any(new.iterdir())):
        raise ConfigurationError(f"NEW {new} must be a new or empty directory (OLD is only read)")
    rows = convert(old, ResultsTable(new), history=history)  # its errors: one line, exit 2
    click.echo(f"{new}: {rows} current row(s) from {old}")


__all__ = ["compact", "migrate", "status", "vacuum"]
