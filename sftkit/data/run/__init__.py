"""The machinery that runs a stage, the same for every stage and every executor.

``contract`` (what a stage declares: Shard, Step, phases, Stage, its cache key), ``filtering`` (the
one place a filtering stage's rows are counted, dropped and written), ``runner`` (locks, stale
temporaries, shards, cached steps, summary lines), ``executors`` (this process or Ray, handed the
shard task), and the stores under them: ``manifest``, ``stats``, ``workdir``, ``parquet_io``,
``parallel``. Nothing here imports a stage.
"""
