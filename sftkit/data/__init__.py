"""The data pipeline: raw OIG-format JSONL to a clean instruct dataset.

Stages run in order, each reading the previous stage's parquet parts and writing its own:
download → detox → chop → grade → finalize. ``sftkit.data.pipeline`` is the runner; each
stage lives in its own module and the filters and scorers they use live beside them.
"""


class DataError(RuntimeError):
    """Input, settings or an environment that a stage cannot work with; the message says what to do."""
