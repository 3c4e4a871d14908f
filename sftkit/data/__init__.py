"""The data pipeline: raw OIG-format JSONL to a clean instruct dataset.

Stages run in order, each reading the previous stage's parquet parts and writing its own:
download → detox → chop → grade → finalize. ``sftkit.data.pipeline`` is the runner; each
stage lives in its own module and the filters and scorers they use live beside them.
"""

from sftkit.errors import DataError  # noqa: E402  (re-exported: the stages raise it)
