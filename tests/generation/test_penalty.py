"""The repetition penalty spares the tokens that end an answer (EOS, the stop strings' tokens)."""
from dataclasses import replace

import pytest
import torch
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from sftkit.generation import AnswerStream, Request, build_prompt, generate_answers, generation_kwargs
from sftkit.generation.decoding import SparingRepetitionPenalty, answer_end_ids

QUESTIONS = ["Who are you?", "What is the capital of France? Tell me about it, please."]


def random_case(rows=3, length=12, vocab=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, length), generator=generator)
    scores = torch.randn(rows, vocab, generator=generator) * 4  # both signs
    return ids, scores


def test_penalised_ids_change_as_transformers_does_and_spared_ids_keep_their_scores():
    ids, scores = random_case()
    spared = [[ids[0, 0].item(), ids[0, 5].item()], [], [ids[2, 3].item(), 49]]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    got = SparingRepetitionPenalty(1.3, spared)(ids, scores.clone())
    assert not torch.equal(expected, scores), "the penalty must change something for this test to mean anything"
    for row, row_spared in enumerate(spared):
        others = [i for i in range(scores.shape[1]) if i not in row_spared]
        assert torch.equal(got[row, others], expected[row, others])
        assert torch.equal(got[row, row_spared], scores[row, row_spared])
    assert torch.equal(SparingRepetitionPenalty(1.3, [[]])(ids, scores.clone()), expected)


def test_left_padding_is_not_penalised_and_beams_follow_their_row():
    ids, scores = random_case(rows=4)
    padding = torch.tensor([0, 5])
    beams = padding.repeat_interleave(2)
    expected = RepetitionPenaltyLogitsProcessor(0.8, prompt_ignore_length=beams)(ids, scores.clone())
    got = SparingRepetitionPenalty(0.8, [[], [7]], padding)(ids, scores.clone())
    assert torch.equal(got[:2], expected[:2])
    assert torch.equal(got[2:, 7], scores[2:, 7])
    keep = [i for i in range(scores.shape[1]) if i != 7]
    assert torch.equal(got[2:, keep], expected[2:, keep])


def test_a_stop_marker_in_the_prompt_can_still_win():
    ids = torch.tensor([[3, 4, 5]])  # token 3 plays "<human>:", already in the prompt
    scores = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 1.9]])
    assert RepetitionPenaltyLogitsProcessor(1.07)(ids, scores.clone()).argmax().item() == 6
    assert SparingRepetitionPenalty(1.07, [[3]])(ids, scores.clone()).argmax().item() == 3


def test_answer_end_ids_hold_eos_and_every_token_of_each_stop(llama):
    tokenizer = llama[1].tokenizer
    ids = answer_end_ids(tokenizer, ["<human>:"], [tokenizer.eos_token_id])
    expected = {tokenizer.eos_token_id, *tokenizer.encode("<human>:", add_special_tokens=False),
                *tokenizer.encode("\n<human>:", add_special_tokens=False)}
    assert set(ids) == expected


def test_engine_spares_each_rows_stops_and_eos(llama, monkeypatch):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    config = replace(config, repetition_penalty=1.3, max_new_tokens=4)
    seen = {}
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.update(kw) or real(**kw))
    prompts = [build_prompt(tokenizer, [], q, config, 512).text for q in QUESTIONS]
    generate_answers(models, [Request(prompts[0]), Request(prompts[1], stop=("Paris",))], config)
    assert seen["repetition_penalty"] == 1.0
    (penalty,) = seen["logits_processor"]
    assert isinstance(penalty, SparingRepetitionPenalty) and penalty.penalty == 1.3
    marker = set(tokenizer.encode("\n<human>:", add_special_tokens=False))
    paris = set(tokenizer.encode("Paris", add_special_tokens=False)) - marker
    assert {tokenizer.eos_token_id} | marker <= set(penalty.spared[0]) & set(penalty.spared[1])
    assert paris <= set(penalty.spared[1]) and not paris & set(penalty.spared[0])
    assert penalty.padding.tolist()[0] > 0 and penalty.padding.tolist()[1] == 0  # the shorter prompt is padded


def test_no_penalty_passes_nothing_to_generate(llama):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    kwargs = generation_kwargs(replace(config, repetition_penalty=1.0), model, tokenizer)
    assert kwargs["repetition_penalty"] == 1.0 and "logits_processor" not in kwargs


def cut(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).split("<human>:")[0].split("<bot>:")[0].strip()


def hf_greedy(model, tokenizer, prompt, config, processor):
    inputs = tokenizer([prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=False, repetition_penalty=1.0,
                         logits_processor=LogitsProcessorList(processor), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return out[0, inputs["input_ids"].shape[1]:]


@pytest.mark.parametrize("penalty", [1.3, 2.0])
def test_engine_greedy_equals_transformers_with_the_sparing_penalty(llama, penalty):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    config = replace(config, repetition_penalty=penalty, max_new_tokens=24, stop=[])
    prompts = [build_prompt(tokenizer, [], q, config, 512).text for q in QUESTIONS]
    spared = answer_end_ids(tokenizer, ["<human>:", "<bot>:"], [tokenizer.eos_token_id])
    batch = generate_answers(models, prompts, config)  # left-padded together
    for prompt, answer in zip(prompts, batch):
        ids = hf_greedy(model, tokenizer, prompt, config, [SparingRepetitionPenalty(penalty, [spared])])
        want = cut(tokenizer, ids)
        assert answer.text == want
        stream = AnswerStream(models, prompt, config)
        assert "".join(stream) == want and stream.answer.text == want
    plain = [hf_greedy(model, tokenizer, p, config, []) for p in prompts]
    assert [a.text for a in batch] != [cut(tokenizer, p) for p in plain], "the penalty should change an answer"


def test_sparing_nothing_is_transformers_own_penalty_in_a_padded_batch(llama):
    config, models = llama
    model, tokenizer = models.model, models.tokenizer
    prompts = [build_prompt(tokenizer, [], q, config, 512).text for q in QUESTIONS]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    common = dict(max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    theirs = model.generate(**inputs, repetition_penalty=1.5, **common)
    padding = (inputs["attention_mask"] != 0).int().argmax(dim=1)
    ours = model.generate(**inputs, repetition_penalty=1.0, **common,
                          logits_processor=LogitsProcessorList([SparingRepetitionPenalty(1.5, [[]], padding)]))
    assert torch.equal(ours, theirs)
