"""One run per (output, shard): an exclusive lock on a file in the output directory.

``fcntl.flock`` locks belong to the open file, so the kernel drops them when the process dies,
SIGKILL included: a killed run never leaves a stale lock behind. Each shard has its own lock
file, so shards of one output run side by side. Taking the lock is also where an output that is
a regular file, or not writable, is refused: before any image is read.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fdpipe.job.config import ConfigError
from fdpipe.job.inputs import OUTPUT_MARKER


def lock_name(shard: tuple[int, int]) -> str:
    index, count = shard
    return ".fdpipe-lock" if count == 1 else f".fdpipe-lock-s{index}of{count}"


@contextmanager
def output_lock(directory: str | os.PathLike[str], shard: tuple[int, int]) -> Iterator[Path]:
    """Hold the (``directory``, ``shard``) lock while the block runs; ConfigError when taken."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--output {directory} is a file, not a directory")
    path = directory / lock_name(shard)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.close(own_file(directory / OUTPUT_MARKER, os.O_WRONLY))
        with tempfile.TemporaryFile(dir=directory):  # part files are created here: can they be?
            pass
        fd = own_file(path, os.O_RDWR)
    except OSError as exc:
        raise ConfigError(f"--output {directory} is not writable: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"another fdpipe run holds {path} (pid {holder}): it writes this output"
                + (f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else "")
                + "; wait for it to end or use another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def own_file(path: Path, mode: int) -> int:
    """``path`` opened (created where missing) as a regular file of the output's own: a link
    (which would lead the write out of the output), a FIFO or a device is a ConfigError."""
    try:
        fd = os.open(path, mode | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a link: fdpipe writes only files of its own") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads
            raise ConfigError(f"{path} is not a regular file: move it out of the output") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file: move it out of the output")
    return fd


__all__ = ["lock_name", "output_lock", "own_file"]
