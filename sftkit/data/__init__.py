"""The data pipeline: raw conversation files to a clean instruct dataset, in five resumable stages.

download → detox → chop → grade → finalize, each reading the previous stage's parquet parts and
writing its own. The package is in layers, each importing only those below it:

* ``config``: ``DataConfig``, every setting and default;
* ``run/``: the machinery every stage shares: the stage contract (``run.contract``: Shard, Step,
  phases, Stage, cache keys), the filter helper where a stage's rows are dropped and counted
  (``run.filtering``), the runner (locks, shards, manifests, summaries), executors (local, Ray);
* ``algorithms/``: row algorithms (splitting, hashing, near duplicates, readability, scorers,
  identity, personality), functions of rows and texts;
* ``inputs/``: reading what users bring (which files, fetching, formats, OpenAssistant trees);
* ``stages/``: the five stages, each a ``STAGE`` declaration plus its own row work;
* ``pipeline``: the stage registry, the shard task handed to executors, and ``run``.
"""

from sftkit.errors import DataError  # noqa: E402  (re-exported: the stages raise it)
