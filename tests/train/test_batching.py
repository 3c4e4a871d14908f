import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sftkit.models import load_model, load_tokenizer
from sftkit.rows import Conversation
from sftkit.train.batching import (MEGABATCH_FACTOR, ExampleList, best_fit_decreasing, collate, epoch_plan,
                                   shuffled_range)
from sftkit.train.config import TrainConfig
from sftkit.train.distributed import World
from sftkit.train.loop import Plan
from sftkit.train.loss import token_losses
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


def legacy_plan(lengths, micro_batch_size, seed, epoch, group_by_length=False, world_size=1):
    """The list-of-examples planning of earlier releases (unpacked), as the oracle of the order."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = micro_batch_size * world_size * MEGABATCH_FACTOR
        sorted_rows = []
        for i in range(0, len(order), window):
            sorted_rows.extend(sorted(order[i:i + window], key=lambda e: lengths[e], reverse=True))
        order = sorted_rows
    batches = [[[e] for e in order[i:i + micro_batch_size]] for i in range(0, len(order), micro_batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def greedy_rows(lengths, order, cutoff_len):
    """Greedy packing of earlier releases: fill each row in order until the next item does not fit."""
    rows, used = [], cutoff_len
    for i in order:
        if used + lengths[i] > cutoff_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += lengths[i]
    return rows


def as_lists(plan):
    return [[row.tolist() for row in plan.batch(b)] for b in range(len(plan))]


@pytest.mark.parametrize("rows", [0, 1, 7, 203, 2000])
@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("micro_batch_size,world_size", [(1, 1), (3, 1), (4, 2)])
def test_unpacked_plans_keep_the_order_of_earlier_releases(rows, group_by_length, micro_batch_size, world_size):
    lengths = np.random.default_rng(rows).integers(1, 40, rows).astype(np.int32)  # many ties: the sort must be stable
    for seed, epoch in ((0, 0), (3, 2)):
        plan = epoch_plan(lengths, micro_batch_size, seed=seed, epoch=epoch, group_by_length=group_by_length,
                          world_size=world_size)
        assert as_lists(plan) == legacy_plan(lengths.tolist(), micro_batch_size, seed, epoch, group_by_length,
                                             world_size)


def test_shuffled_range_is_the_permutation_a_list_shuffle_makes():
    items = [f"row {i}" for i in range(1000)]
    random.Random(42).shuffle(items)
    assert [f"row {i}" for i in shuffled_range(1000, random.Random(42))] == items


def test_best_fit_decreasing_packs_whole_items_tighter_than_greedy():
    assert best_fit_decreasing(np.array([6, 5, 5, 4]), np.arange(4), 10)[1].tolist() == [0, 2, 4]  # {6,4} {5,5}
    assert len(greedy_rows([6, 5, 5, 4], range(4), 10)) == 3
    # Answers of a chat set: a long tail of lengths (lognormal), cut at cutoff_len.
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(5.0, 0.9, 20_000).astype(np.int64) + 8, 512)
    order = rng.permutation(len(lengths))
    items, bounds = best_fit_decreasing(lengths, order, 512)
    assert sorted(items.tolist()) == list(range(len(lengths)))
    row_tokens = np.add.reduceat(lengths[items], bounds[:-1])
    assert row_tokens.max() <= 512
    greedy = greedy_rows(lengths.tolist(), order.tolist(), 512)
    bfd_efficiency = lengths.sum() / (512 * len(row_tokens))
    greedy_efficiency = lengths.sum() / (512 * len(greedy))
    assert bfd_efficiency > 0.99 and greedy_efficiency < 0.85, (bfd_efficiency, greedy_efficiency)


def test_packed_plans_are_deterministic_full_and_cover_every_item():
    lengths = np.random.default_rng(1).integers(3, 60, 500)
    plan = epoch_plan(lengths, 4, seed=1, epoch=2, pack=True, cutoff_len=64)
    assert as_lists(plan) == as_lists(epoch_plan(lengths, 4, seed=1, epoch=2, pack=True, cutoff_len=64))
    assert as_lists(plan) != as_lists(epoch_plan(lengths, 4, seed=1, epoch=3, pack=True, cutoff_len=64))
    rows = [row for b in range(len(plan)) for row in plan.batch(b)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(500))
    assert all(lengths[row].sum() <= 64 for row in rows)
    assert plan.tokens == lengths.sum() and plan.efficiency > 0.97
    # rows are shuffled after packing: not longest-first
    assert [len(r) for r in rows] != sorted((len(r) for r in rows))


def test_epoch_plans_are_deterministic_and_cover_every_example(tiny_llama):
    examples = ExampleList(examples_for(load_tokenizer(tiny_llama), train_on_inputs=False) * 10)
    for options in ({}, {"group_by_length": True}, {"pack": True, "cutoff_len": 64}):
        plan = as_lists(epoch_plan(examples.lengths, 4, seed=1, epoch=2, **options))
        assert plan == as_lists(epoch_plan(examples.lengths, 4, seed=1, epoch=2, **options))
        assert plan != as_lists(epoch_plan(examples.lengths, 4, seed=1, epoch=3, **options))
        assert sorted(i for b in plan for row in b for i in row) == list(range(len(examples)))
    grouped, plain = (epoch_plan(examples.lengths, 4, seed=1, epoch=0, **o) for o in ({"group_by_length": True}, {}))
    spread = [np.ptp(examples.lengths[np.concatenate(grouped.batch(b))]) for b in range(len(grouped))]
    plain_spread = [np.ptp(examples.lengths[np.concatenate(plain.batch(b))]) for b in range(len(plain))]
    assert sum(spread) < sum(plain_spread)


class CountingSet:
    """A tokenized set backed by numpy arrays that counts which rows were fetched."""

    def __init__(self, lengths):
        self.lengths = np.asarray(lengths, dtype=np.int32)
        self.fetched = []

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        self.fetched.append(int(i))
        ids = np.arange(1, self.lengths[i] + 1, dtype=np.int32)
        return SimpleNamespace(input_ids=ids, labels=np.where(ids > 1, ids, IGNORE))


@pytest.mark.parametrize("pack", [False, True])
def test_each_rank_fetches_only_its_share_of_every_step(pack):
    lengths = np.random.default_rng(2).integers(2, 30, 64)
    config = TrainConfig(micro_batch_size=2, batch_size=8, cutoff_len=64, pack=pack, seed=5, max_steps=0)
    shares = []
    for rank in range(2):
        items = CountingSet(lengths)
        plan = Plan(items, config, World(rank, rank, 2, "cpu"), grad_accum=2)
        items.fetched.clear()
        micro = plan.micro_batches(1)
        assert len(micro) == 2
        shares.append(items.fetched)
        batch = collate(micro[0], pad_token_id=0)  # numpy items collate like lists
        assert batch["num_tokens"] == sum(lengths[i] for row in plan._plan.batch(4 + rank) for i in row)
    assert not set(shares[0]) & set(shares[1])
    if not pack:
        assert len(shares[0]) == len(shares[1]) == 4  # 2 micro-batches of 2 rows each, of 64 rows


def test_collate_pads_right_and_ignores_padding(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    a, b = examples_for(tokenizer, train_on_inputs=False)[:2]
    batch = collate([[a], [b]], tokenizer.pad_token_id, pad_to=64)
    assert batch["input_ids"].shape == (2, 64) and "position_ids" not in batch
    assert batch["attention_mask"].sum().item() == batch["num_tokens"] == len(a.input_ids) + len(b.input_ids)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
