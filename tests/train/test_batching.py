import pytest
import torch

from sftkit.models import load_model, load_tokenizer
from sftkit.train.batching import collate, epoch_plan, pack_examples, token_losses
from sftkit.rows import Conversation
from sftkit.train.recipes.sft import packing_needs_block_mask
from sftkit.train.tokenize import IGNORE, tokenize_all

CONVERSATIONS = [
    [("human", "What is the capital of France?"), ("bot", "The capital of France is Paris.")],
    [("human", "Who are you?"), ("bot", "I am a helpful assistant."), ("human", "Hello"), ("bot", "Hi!")],
    [("human", "Add two and two."), ("bot", "Two and two make four.")],
    [("human", "Hello, how are you today?"), ("bot", "I am fine, thank you very much for asking.")],
]


def examples_for(tokenizer, train_on_inputs=True):
    convs = [Conversation(t, str(i)) for i, t in enumerate(CONVERSATIONS)]
    return tokenize_all(convs, tokenizer, "human_bot", 64, train_on_inputs=train_on_inputs, progress=False).examples


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_neox"])
def test_packed_loss_equals_unpacked_per_example(arch, request):
    path = request.getfixturevalue(arch)
    tokenizer = load_tokenizer(path)
    model = load_model(path, device="cpu").eval()
    examples = examples_for(tokenizer)
    packed = collate([examples], tokenizer.pad_token_id, pad_to=200, block_mask=packing_needs_block_mask(model))
    assert packed["num_tokens"] == sum(len(e.input_ids) for e in examples)
    with torch.no_grad():
        packed_losses = token_losses(model(**{k: packed[k] for k in ("input_ids", "attention_mask", "position_ids")
                                              if k in packed}).logits, packed["labels"])[0]
        at = 0
        for ex in examples:
            alone = collate([[ex]], tokenizer.pad_token_id)
            alone_losses = token_losses(model(input_ids=alone["input_ids"],
                                              attention_mask=alone["attention_mask"]).logits, alone["labels"])[0]
            n = len(ex.input_ids)
            # position at+n-1 predicts the next example's first token, whose label is always ignored
            assert packed_losses[at + n - 1] == 0
            torch.testing.assert_close(packed_losses[at:at + n - 1], alone_losses, atol=1e-4, rtol=1e-4)
            at += n


def test_position_ids_alone_leak_across_examples_on_this_attention(tiny_llama):
    """Why the block mask exists: the same comparison fails with only restarting position_ids
    (transformers' padding-free signal) on the CPU's sdpa attention, so the test above can fail."""
    tokenizer = load_tokenizer(tiny_llama)
    model = load_model(tiny_llama, device="cpu").eval()
    examples = examples_for(tokenizer)
    packed = collate([examples], tokenizer.pad_token_id)
    with torch.no_grad():
        position_only = token_losses(model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits,
                                     packed["labels"])[0]
        blocked = token_losses(model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                                     attention_mask=collate([examples], tokenizer.pad_token_id,
                                                            block_mask=True)["attention_mask"]).logits,
                               packed["labels"])[0]
    first = len(examples[0].input_ids)
    torch.testing.assert_close(position_only[:first], blocked[:first])
    assert not torch.allclose(position_only[first:], blocked[first:], atol=1e-3)
    assert packing_needs_block_mask(model)


def test_pack_fills_rows_with_whole_examples(tiny_llama):
    examples = examples_for(load_tokenizer(tiny_llama)) * 5
    longest = max(len(e.input_ids) for e in examples)
    bins = pack_examples(examples, 2 * longest)
    assert sum(len(b) for b in bins) == len(examples)
    assert all(sum(len(e.input_ids) for e in b) <= 2 * longest for b in bins)
    assert len(bins) < len(examples)


def test_epoch_plans_are_deterministic_and_cover_every_example(tiny_llama):
    examples = examples_for(load_tokenizer(tiny_llama), train_on_inputs=False) * 10
    for options in ({}, {"group_by_length": True}, {"pack": True, "cutoff_len": 64}):
        plan = epoch_plan(examples, 4, seed=1, epoch=2, **options)
        assert plan == epoch_plan(examples, 4, seed=1, epoch=2, **options)
        assert plan != epoch_plan(examples, 4, seed=1, epoch=3, **options)
        assert sorted(id(e) for b in plan for row in b for e in row) == sorted(id(e) for e in examples)
    grouped = epoch_plan(examples, 4, seed=1, epoch=0, group_by_length=True)
    spread = [max(len(r[0].input_ids) for r in b) - min(len(r[0].input_ids) for r in b) for b in grouped]
    plain = epoch_plan(examples, 4, seed=1, epoch=0)
    plain_spread = [max(len(r[0].input_ids) for r in b) - min(len(r[0].input_ids) for r in b) for b in plain]
    assert sum(spread) < sum(plain_spread)


def test_collate_pads_right_and_ignores_padding(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    a, b = examples_for(tokenizer, train_on_inputs=False)[:2]
    batch = collate([[a], [b]], tokenizer.pad_token_id, pad_to=64)
    assert batch["input_ids"].shape == (2, 64) and "position_ids" not in batch
    assert batch["attention_mask"].sum().item() == batch["num_tokens"] == len(a.input_ids) + len(b.input_ids)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
