"""The five stages, each declaring its ``STAGE`` (:mod:`sftkit.data.run.contract`) and its row work:
download → detox → chop → grade → finalize (with its data card). A stage imports the machinery,
the inputs and the algorithms below it, never another stage (finalize's data card aside) nor the
registry above it (:mod:`sftkit.data.pipeline`).
"""

