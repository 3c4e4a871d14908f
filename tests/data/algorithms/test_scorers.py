import numpy as np
import pytest
import torch

from sftkit.data.algorithms.scorers import DetoxifyScorer, profane_flags, profanity_probs
from sftkit.errors import ScorerError
from sftkit.reward import RewardModelScorer

CLEAN = ["The capital of France is Paris.", "Photosynthesis turns light into chemical energy.",
         "Thank you for the detailed explanation of compound interest."]
RUDE = ["You are a fucking idiot and your code is shit.", "Shut up, you stupid bitch."]


def test_alt_profanity_check_separates_clean_from_rude():
    probs = profanity_probs(CLEAN + RUDE)
    assert probs.dtype == np.float32
    assert (probs[:3] < 0.25).all() and (probs[3:] >= 0.25).all()
    assert profanity_probs([]).shape == (0,)


def test_better_profanity_flags_match_the_library_itself():
    from better_profanity import Profanity

    texts = CLEAN + RUDE + ["you are a sh1t", "f u c k this", "b@stard!", "hand_job", "a$$hole man",
                            "that is d4mn good", "class assessment of Scunthorpe", "SHIT", "fu.ck",
                            "hell no", "document the cumulative glass passage", "", "  ...  "]
    reference = Profanity()
    expected = [reference.contains_profanity(t) for t in texts]
    assert profane_flags(texts).tolist() == expected
    assert sum(expected) >= 10  # the cases above really exercise both verdicts


def test_detoxify_loads_a_local_checkpoint_and_scores_every_head(tiny_detoxify):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    checkpoint, config_dir = tiny_detoxify
    scorer = DetoxifyScorer("original", str(checkpoint), str(config_dir), device="cpu", batch_size=2)
    assert scorer.heads == ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"]
    texts = CLEAN + RUDE
    scores = scorer.score(texts)
    assert set(scores) == set(scorer.heads) and all(v.shape == (5,) for v in scores.values())
    # The same numbers as the saved weights give through plain transformers.
    model = BertForSequenceClassification(BertConfig.from_pretrained(config_dir))
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])
    model.eval()
    tokenizer = BertTokenizer.from_pretrained(config_dir)
    with torch.no_grad():
        expected = torch.sigmoid(model(**tokenizer(texts, return_tensors="pt", padding=True)).logits)
    np.testing.assert_allclose(scores["toxicity"], expected[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(scores["identity_attack"], expected[:, 5].numpy(), atol=1e-5)


def test_detoxify_without_weights_fails_clearly(tmp_path, monkeypatch):
    with pytest.raises(ScorerError, match="no such file"):
        DetoxifyScorer(checkpoint=str(tmp_path / "missing.ckpt"), device="cpu")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ScorerError, match="--detoxify_checkpoint=FILE.ckpt .*--detoxify=false"):
        DetoxifyScorer("original", device="cpu")


class NotPlainData:
    pass


def test_detoxify_refuses_a_checkpoint_with_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"config": NotPlainData(), "state_dict": {}}, path)
    with pytest.raises(ScorerError, match="weights_only=True"):
        DetoxifyScorer(checkpoint=str(path), device="cpu")


def test_reward_model_scores_pairs_in_order(tiny_reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = RewardModelScorer(str(tiny_reward_model), batch_size=2, device="cpu", max_length=64)
    questions = ["What is water?", "Explain photosynthesis in detail please.", "Hi", "Why?", "Who are you?"]
    answers = ["Water is H2O.", "Plants turn light into energy.", "Hello!", "Because.", "A model."]
    scores = scorer.score(questions, answers)
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    with torch.no_grad():
        expected = [torch.sigmoid(model(**tokenizer(q, a, return_tensors="pt")).logits[0, 0]).item()
                    for q, a in zip(questions, answers)]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert len(set(np.round(scores, 6))) > 1


def test_reward_model_halves_the_batch_on_out_of_memory(tiny_reward_model, monkeypatch):
    scorer = RewardModelScorer(str(tiny_reward_model), batch_size=8, device="cpu")
    questions, answers = [f"question {i}" * (i + 1) for i in range(7)], [f"answer {i}" for i in range(7)]
    expected = scorer.score(questions, answers)
    forward, sizes = scorer._forward, []

    def small_memory(q, a):
        sizes.append(len(q))
        if len(q) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(q, a)

    monkeypatch.setattr(scorer, "_forward", small_memory)
    np.testing.assert_allclose(scorer.score(questions, answers), expected, atol=1e-6)
    assert sizes[:3] == [7, 4, 2] and max(sizes[2:]) == 2


def test_reward_model_out_of_memory_on_one_pair_is_an_error(tiny_reward_model, monkeypatch):
    scorer = RewardModelScorer(str(tiny_reward_model), batch_size=2, device="cpu")

    def no_memory(q, a):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")

    monkeypatch.setattr(scorer, "_forward", no_memory)
    with pytest.raises(ScorerError, match="--reward_max_length"):
        scorer.score(["q"], ["a"])


def test_reward_model_that_cannot_load_says_how_to_fix_it(tmp_path):
    with pytest.raises(ScorerError, match="--use_reward_model=false"):
        RewardModelScorer(str(tmp_path / "no-such-model"), local_files_only=True, device="cpu")
