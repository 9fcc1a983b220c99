"""The dataset job behind ``fdpipe explain``, one module per stage:
``setup -> inputs -> plan -> decode -> rows -> parts``, run by the local or the Ray engine
(``local_engine``, ``ray_engine``) and put in a row by ``run``; ``reader`` reads an output back.

The package itself imports nothing, so that a torch-free submodule (``record``: the run record a
refused command line still writes) is imported without the model side. Its public names
(``JobConfig``, ``run_job``, ``read_maps``) are those of ``fdpipe``.
"""
