"""The data pipeline: raw OIG-format JSONL to a clean instruct dataset.

Stages run in order, each reading the previous stage's parquet parts and writing its own:
download → detox → chop → grade → finalize. Each stage module declares its contract (inputs,
outputs, the settings that change its result) as a ``runner.Stage``; ``sftkit.data.run.runner`` runs
any stage (sharding, manifests, stats, locks), ``sftkit.data.run.executors`` decides where its shards
run (this process or Ray), and ``sftkit.data.pipeline`` puts the five in order.
"""

from sftkit.errors import DataError  # noqa: E402  (re-exported: the stages raise it)
