"""Validation metrics on generated answers, computed offline with the libraries directly.

``bleu`` is NLTK's corpus BLEU on whitespace tokens (0–1, smoothed); ``sacrebleu`` is
SacreBLEU's standard corpus score (0–100); ``rouge`` gives ROUGE-1/2/L F1 (0–1); ``meteor`` is
NLTK's METEOR averaged over rows (0–1), with WordNet synonyms only when the WordNet corpus is
installed locally (exact and stem matches otherwise; ``meteor_wordnet`` says which).
"""
from __future__ import annotations


class _NoSynonyms:
    """Stands in for WordNet when its corpus is not installed: no word has synonyms."""

    @staticmethod
    def synsets(word, *args, **kwargs):
        return []


def _wordnet():
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            return None
    from nltk.corpus import wordnet

    return wordnet


def compute_metrics(names: list[str], predictions: list[str], references: list[str]) -> dict[str, float]:
    """The requested metrics for paired predictions and references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    out: dict[str, float] = {}
    if not predictions:
        return out
    if "bleu" in names:
        from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

        out["bleu"] = corpus_bleu([[r.split()] for r in references], [p.split() for p in predictions],
                                  smoothing_function=SmoothingFunction().method1)
    if "sacrebleu" in names:
        import sacrebleu

        out["sacrebleu"] = sacrebleu.corpus_bleu(predictions, [references]).score
    if "rouge" in names:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        scores = [scorer.score(r, p) for p, r in zip(predictions, references)]
        for key in ("rouge1", "rouge2", "rougeL"):
            out[key] = sum(s[key].fmeasure for s in scores) / len(scores)
    if "meteor" in names:
        from nltk.translate.meteor_score import meteor_score

        wordnet = _wordnet()
        out["meteor"] = sum(meteor_score([r.split()], p.split(), wordnet=wordnet or _NoSynonyms())
                            for p, r in zip(predictions, references)) / len(predictions)
        out["meteor_wordnet"] = float(wordnet is not None)
    return out
