"""Input reading: which files a run reads (``files``), fetching them (``fetch``), their formats and
records (``formats``, ``oasst`` trees) and one file's rows as the download stage writes them
(``sources``). Malformed records become counted rejects here, never exceptions.
"""
