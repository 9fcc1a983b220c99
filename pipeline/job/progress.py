"""Progress of a long job: a tqdm bar on a terminal, plain periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

log = logging.getLogger("fdpipe.job")


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class Summary:
    done: int  # images explained by this run
    failed: int  # images that failed in this run
    skipped: int  # images already in the output (resume)
    failed_before: int  # failed images among the skipped ones
    seconds: float

    @property
    def images_per_second(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def any_failed(self) -> bool:
        return self.failed + self.failed_before > 0

    def __str__(self) -> str:
        earlier = f" (+{self.failed_before} in earlier runs)" if self.failed_before else ""
        took = format_duration(self.seconds)
        return (
            f"done {self.done}, failed {self.failed}{earlier}, skipped {self.skipped} already "
            f"in the output, {took} ({self.images_per_second:.1f} images/s)"
        )


class Progress:
    """Counts images as their rows are produced."""

    def __init__(self, total: int, *, bar: bool | None = None, every: float = 30.0) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.start = time.perf_counter()
        self.every = every
        self.last_log = self.start
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = tqdm(total=total, unit="img", dynamic_ncols=True) if use_bar else None

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


__all__ = ["Progress", "Summary", "format_duration"]
