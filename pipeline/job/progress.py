"""Progress of a long job: a tqdm bar on a terminal, plain periodic log lines otherwise; one log
line per failed image; the run's summary and its exit code."""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

log = logging.getLogger("fdpipe.job")


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# Exit codes of ``fdpipe explain`` (documented in its --help and the README).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_EMPTY = 0, 1, 2, 3
EXIT_STORAGE = 4  # the output cannot be written: disk full, file-size limit, I/O error
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as shells expect


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: nothing half-written is committed, the record says so."""

    exit_code = EXIT_TERMINATED


@dataclass
class Summary:
    done: int  # images explained by this run (ok)
    failed: int  # images that failed in this run
    skipped: int  # images already in the output with current rows for this run's methods
    failed_before: int  # failed images among the skipped ones (--no-retry)
    seconds: float
    new: int = 0  # paths the output had no rows of
    changed: int = 0  # paths whose content changed since their rows were made
    retried: int = 0  # images whose newest rows had failed
    added: int = 0  # images explained for methods or classes they had no rows of
    pruned: int = 0  # inputs gone from the input (--prune)
    empty: bool = False  # the input was empty or missing: nothing to do
    allow_empty: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)  # this run's: path, error

    @property
    def images_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def any_failed(self) -> bool:
        return self.failed + self.failed_before > 0

    @property
    def exit_code(self) -> int:
        if self.empty and not self.allow_empty:
            return EXIT_EMPTY
        return EXIT_FAILED if self.any_failed else EXIT_OK

    def counts(self) -> dict[str, int]:
        names = ("new", "changed", "retried", "added", "done", "failed", "skipped", "pruned")
        return {"ok" if n == "done" else n: getattr(self, n) for n in names} | {
            "failed_before": self.failed_before
        }

    def __str__(self) -> str:
        if self.empty:
            return "the input is empty or missing: nothing to do"
        earlier = f" (+{self.failed_before} in earlier runs)" if self.failed_before else ""
        took = format_duration(self.seconds)
        return (
            f"done {self.done}, failed {self.failed}{earlier}, skipped {self.skipped} already "
            f"in the output; new {self.new}, changed {self.changed}, retried {self.retried}, "
            f"added {self.added}, pruned {self.pruned}; {took} "
            f"({self.images_per_second:.1f} images/s)"
        )


def peak_memory_bytes() -> int:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Progress:
    """Counts images as their rows are produced; logs each failure with its path and reason."""

    def __init__(self, total: int, *, bar: bool | None = None, every: float = 30.0) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.failures: list[dict[str, str]] = []
        self.start = time.perf_counter()
        self.every = every
        self.last_log = self.start
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = tqdm(total=total, unit="img", dynamic_ncols=True) if use_bar else None

    def record(self, rows: pa.Table) -> None:
        """Count the images of a batch's rows (one row per failed image)."""
        ok = pc.equal(rows.column("status"), pa.scalar("ok"))
        failed = rows.filter(pc.invert(ok)).select(["image_path", "error"]).to_pylist()
        for row in failed:
            log.warning("failed: %s: %s", row["image_path"], row["error"])
        self.failures += failed
        explained = pc.count_distinct(rows.filter(ok).column("image_path")).as_py()
        self.update(explained, len(failed))

    def update(self, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed
        if self.bar is not None:
            self.bar.update(done + failed)
            self.bar.set_postfix(failed=self.failed, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last_log >= self.every:
            self.last_log = now
            log.info(self.line(now - self.start))

    def line(self, elapsed: float) -> str:
        seen = self.done + self.failed
        rate = seen / elapsed if elapsed > 0 else 0.0
        eta = format_duration((self.total - seen) / rate) if rate > 0 else "?"
        percent = 100.0 * seen / self.total if self.total else 100.0
        return (
            f"{seen}/{self.total} images ({percent:.1f}%), {rate:.1f} images/s, "
            f"{self.failed} failed, ETA {eta}"
        )

    def close(self) -> float:
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.start


__all__ = [
    "EXIT_EMPTY",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STORAGE",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "Progress",
    "Summary",
    "Terminated",
    "format_duration",
    "peak_memory_bytes",
]
