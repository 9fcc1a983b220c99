"""How much memory one batch's perturbation work may hold at once, and the chunks that gives.

Score-CAM and Group-CAM run the whole network on many masked inputs, Ablation-CAM and FD-CAM
the head on many masked activations. Materialising all of a batch's masked inputs at once grows
with the channel count (EfficientNet-Lite0's 1,280 channels, 16 images: 13 GB), so each method
builds them a chunk at a time, sized by bytes: ``MemoryBudget.rows`` says how many rows of a
given size fit, in whole ``granule``s, and records the chunk under the method's name for the
run's metadata.

Chunks are whole granules (32 full forward passes, 128 masks) because oneDNN's results depend on
the batch size it is handed: with the granule fixed, a map does not depend on the budget (bit
for bit, a test). Only a budget below one granule's working set cuts the granule, and the maps
may then move in the last bits (~1e-6).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORWARD_GRANULE = 32  # full forward passes per call of the network (Score-CAM, Group-CAM)
MASK_GRANULE = 128  # masks per call of the head (the authors' chunk)
CPU_CAP = 1 << 30  # beyond ~1 GiB at once the CPU is no faster, only the peak memory grows


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Memory the kernel says can be had without swapping (MemAvailable), else the free pages."""
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget(device: torch.device) -> int:
    """Half the GPU's free memory; on a CPU a quarter of the available memory, at most 1 GiB."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return min(available_bytes() // 4, CPU_CAP)


@dataclass
class MemoryBudget:
    bytes: int
    chunks: dict[str, int] = field(default_factory=dict)  # largest chunk per work, as run

    def __post_init__(self) -> None:
        if self.bytes <= 0:
            raise ValueError(f"the memory budget must be positive, got {self.bytes} bytes")

    def rows(self, work: str, row_bytes: int, total: int, granule: int) -> int:
        """Rows of ``row_bytes`` each to hold at once out of ``total``: whole granules where one
        fits the budget, else as many single rows as fit (at least one)."""
        fit = max(1, self.bytes // max(row_bytes, 1))
        chunk = fit // granule * granule if fit >= granule else fit
        chunk = min(chunk, total)
        self.chunks[work] = max(self.chunks.get(work, 0), chunk)
        return chunk

    def record(self) -> dict[str, object]:
        """What the run's metadata records: the budget and each method's chunk."""
        return {"max_memory_bytes": self.bytes, "chunks": dict(sorted(self.chunks.items()))}


__all__ = [
    "CPU_CAP",
    "FORWARD_GRANULE",
    "MASK_GRANULE",
    "MemoryBudget",
    "available_bytes",
    "default_budget",
]
