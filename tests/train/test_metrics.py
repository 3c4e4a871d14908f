import pytest

from sftkit.train.metrics import compute_metrics

ALL = ["bleu", "sacrebleu", "rouge", "meteor"]


def test_identical_answers_score_perfectly():
    refs = ["the capital of france is paris", "two and two make four"]
    m = compute_metrics(ALL, refs, refs)
    assert m["bleu"] == pytest.approx(1.0) and m["sacrebleu"] == pytest.approx(100.0)
    assert m["rouge1"] == m["rougeL"] == pytest.approx(1.0)
    assert m["meteor"] > 0.99


def test_wrong_answers_score_lower_and_only_requested_metrics_appear():
    refs = ["the capital of france is paris", "two and two make four"]
    good = compute_metrics(["rouge", "meteor"], ["the capital is paris", "two and two make four"], refs)
    bad = compute_metrics(["rouge", "meteor"], ["bananas grow on trees", "blue sky"], refs)
    assert bad["rouge1"] < good["rouge1"] and bad["meteor"] < good["meteor"]
    assert "bleu" not in good and "sacrebleu" not in good
    with pytest.raises(ValueError):
        compute_metrics(ALL, ["a"], [])
