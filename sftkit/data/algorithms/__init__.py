"""Row algorithms: functions of rows and texts, with no files or stages in them.

``splitting`` (conversations into rows), ``lengths`` (turn statistics), ``hashing`` (row ids,
seeded draws, exact dedup), ``neardup`` (MinHash LSH), ``readability`` (Flesch–Kincaid),
``scorers`` (profanity, detoxify), ``identity`` (self-description rewrites), ``personality``
(generated identity rows).
"""
