"""The dataset job behind ``fdpipe explain``: inputs and sharding, decoding and batching, the run
loop, the Parquet sink and reader, the Ray engine, progress."""

from fdpipe.job.config import ENGINES, ConfigError, JobConfig
from fdpipe.job.run import run_job

__all__ = ["ENGINES", "ConfigError", "JobConfig", "run_job"]
