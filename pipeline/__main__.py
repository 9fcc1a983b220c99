"""``python -m fdpipe``: the command line, as the ``fdpipe`` script runs it (child processes of
the benchmarks start it this way, without importing the command line themselves)."""

from fdpipe.cli import main

main(prog_name="fdpipe")
