"""What a dataset job is asked to do: the settings of one ``fdpipe explain`` run."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from fdpipe.errors import FdpipeError
from fdpipe.export.request import DEFAULT_MODEL, ModelRequest
from fdpipe.images import MAX_PIXELS
from fdpipe.methods import MethodSpec

if TYPE_CHECKING:
    from torch import nn

ENGINES = ("local", "ray")
DECODES = ("auto", "cpu", "device")  # where JPEGs are decoded; auto: on the model's GPU


class ConfigError(FdpipeError, ValueError):
    """A job setting that cannot work, found before any image is read."""


@dataclass(frozen=True)
class JobConfig:
    # directory, list file or CSV / Parquet manifest; a URL (s3://bucket/prefix/, a manifest of
    # URLs), WebDataset shards (a brace pattern of .tar files), a Parquet image table
    input: str | os.PathLike[str]
    output: Path | str  # the results table: a local folder, or an object-store URL (str)
    # a source, the whole model request, or an in-memory module (explained through a private
    # copy, as by ``Explainer``; the sha256 of its weights is its identity in the output)
    model: str | ModelRequest | nn.Module = DEFAULT_MODEL
    artifacts: Path | None = None
    runtime: str = "auto"
    precision: str = "fp32"  # fp32, bf16, fp16, auto (fdpipe.backends)
    methods: tuple[str | MethodSpec, ...] = ("fdcam",)  # specs: name or name:key=value
    classes: tuple[int | str, ...] | None = None  # explicit classes (indices or names)
    top_k: int = 1
    target_column: str | None = None  # manifest column with each image's class to explain
    batch_size: int | str = "auto"  # or images per pass (``fdpipe.job.setup.resolve_batch_size``)
    workers: int = os.cpu_count() or 1  # decode threads
    decode: str = "auto"  # JPEGs on the model's device or the CPU (``fdpipe.job.setup``)
    max_memory: int | None = None  # bytes a batch's perturbation work holds; None: the default
    part_size: int = 256  # images per part file: the most work a kill can lose
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    retry: bool = True  # explain again the images whose newest rows failed
    prune: bool = False  # mark the rows of inputs that no longer exist as pruned
    allow_empty: bool = False  # an empty or missing input is not an error (exit 0, not 3)
    summary: Path | None = None  # also write the run record here
    save_weights: bool = False
    engine: str = "local"
    address: str | None = None  # Ray cluster; None starts a local Ray
    actors: int | None = None  # Ray model actors; None: one per GPU, else one per CPU
    progress: bool | None = None  # progress bar; None: when stderr is a terminal
    max_pixels: int = MAX_PIXELS  # decoded pixels per image: bounds decode memory
    # the input's and the output's filesystems (fsspec's names; translated for the table)
    storage_options: dict[str, Any] = field(default_factory=dict)
    command: str | None = None  # the command line, recorded in the run record (the CLI)
    evaluate_sample: int = 0  # score a seeded sample of this many of the run's images (0: off)
    evaluate_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "output", output_location(self.output))
        for name in ("evaluate_sample", "evaluate_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if self.evaluate_sample < 0:
            raise ConfigError(f"evaluate_sample must be >= 0 (0: off), got {self.evaluate_sample}")

    @property
    def request(self) -> ModelRequest:
        if isinstance(self.model, ModelRequest):
            return self.model
        if isinstance(self.model, str):
            return ModelRequest(self.model)
        raise ConfigError("an in-memory model is not a model request (Ray takes only those)")


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # a URL ("s3:/" as well: what Path left)


def output_location(output: str | os.PathLike[str]) -> Path | str:
    """``output`` as a local folder (``file://`` too), or the URL of an object-store prefix the
    table library writes (s3, gs, az...); any other URL is refused (exit 2) before any work."""
    text = os.fspath(output)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    if not URL.match(text):
        return Path(text)
    from fdpipe.job.urls import TABLE_SCHEMES, scheme_of

    if "://" not in text or scheme_of(text) not in TABLE_SCHEMES:
        known = ", ".join(sorted(f"{s}://" for s in TABLE_SCHEMES))
        raise ConfigError(f"--output {text}: the results table goes to a local folder or to "
                          f"{known}")  # fmt: skip
    if "%" in text:  # delta-rs would decode it, fsspec (the run records) would not
        raise ConfigError(f"--output {text}: a '%' in a store path is misread as an escape; "
                          "choose a path without '%'")  # fmt: skip
    return text


@dataclass(frozen=True)
class RunParams:
    """What a run's rows depend on: recorded as ``params`` in every part file and run record,
    and compared on a rerun (the model fields must match; methods and targets may be added)."""

    model: str
    source: str
    weights_id: str
    weights_file: dict[str, str] | None  # {"path", "sha256"} of the --weights file given
    weights_map: str | dict[str, str] | None  # how that file's keys were renamed
    layer: str
    num_classes: int
    class_names: list[str] | None  # where not the default ones (``evaluate --maps`` reuses them)
    score: str
    preprocess: dict[str, object]
    precision: str
    methods: dict[str, dict[str, object]]  # method label -> its options
    classes: list[int | str] | None  # indices or names, as given
    top_k: int | None
    target_column: str | None
    save_weights: bool

    def as_json(self) -> dict[str, object]:
        """JSON-normalised (tuples become lists), as stored and compared."""
        return cast(dict[str, object], json.loads(json.dumps(asdict(self), default=str)))


__all__ = ["DECODES", "ENGINES", "ConfigError", "JobConfig", "RunParams", "output_location"]
