"""Rollouts of the online stages (ppo, grpo): the prompts of a training file, and the policy's answers to them.

Prompts are the prompt part of any row training reads (:func:`sftkit.rows.question_turns`, as the
evaluation mode reads them): SFT rows in every format (every turn before the last answer), preference
pairs (their prompt), and plain prompt lists (strings, or rows with ``prompt``), rendered with the
run's prompt type by :func:`sftkit.prompts.render_open`, the function generate.py renders with.

Answers come from the generation engine (sftkit.generation), as generate.py makes them: the same stop
strings and left padding, on the weights being trained (no reload), sampled. This module is the one
place online training calls the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

from sftkit import rows
from sftkit.errors import DataError
from sftkit.generation import GenerateConfig, Models, Request
from sftkit.generation import generate_answers as engine_answers
from sftkit.prompts import PromptError, Turn, encode, get_prompt_type, join_turns, render_open
from sftkit.train.data import ReadStats, read_units


@dataclass(frozen=True)
class RolloutPrompt:
    """A prompt as the policy sees it (``text``, ``ids``) and as a reward sees it (``question``)."""

    text: str  # rendered with the run's prompt type, up to where the answer starts
    ids: tuple[int, ...]  # ``text`` tokenized as the engine tokenizes it
    question: str  # the human message; earlier turns as '<human>: …\n<bot>: …' text before it


@dataclass(frozen=True)
class Completion:
    """One sampled answer: its tokens as generated (stop string or EOS included), its text, how it ended."""

    ids: tuple[int, ...]
    text: str
    stopped: bool  # ended by itself (EOS or a stop string), not cut at max_new_tokens


# ---------------------------------------------------------------- prompts
def render(turns: list[Turn], prompt_type: str, tokenizer, tools: list[dict] | None = None) -> RolloutPrompt:
    """The prompt text generation answers (as generate.py renders a conversation), with its ids."""
    text = render_open(turns, prompt_type, tokenizer, tools)
    last = max(i for i, (role, _) in enumerate(turns) if role == "human")
    earlier = [turn for turn in turns[:last] if turn[0] in ("human", "bot")]
    question = turns[last][1] if not earlier else join_turns(earlier + [("human", turns[last][1])])
    return RolloutPrompt(text, tuple(encode(tokenizer, text, prompt_type)["input_ids"]), question)


def read_prompts(path: str, col_dict: dict, prompt_type: str, tokenizer, max_prompt_tokens: int
                 ) -> tuple[list[RolloutPrompt], ReadStats]:
    """Every distinct prompt of ``path`` that fits ``max_prompt_tokens``; the others counted by reason."""
    if get_prompt_type(prompt_type).name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise PromptError("--prompt_type=chat needs a tokenizer with a chat template; this one has none")
    stats = ReadStats()
    prompts, seen = [], set()
    for unit in read_units(path, col_dict, mode="prompts"):
        stats.rows += 1
        if unit.reason and not unit.conversations:
            stats.skip(unit.reason, unit.where)
        for conversation in unit.conversations:
            turns = rows.question_turns(conversation)
            prompt = render(turns, prompt_type, tokenizer, conversation.tools) if turns else None
            if prompt is None:
                stats.skip("no_question", conversation.where)
            elif len(prompt.ids) > max_prompt_tokens:
                stats.skip("prompt_too_long", conversation.where)
            elif prompt.text in seen:
                stats.skip("repeated_prompt", conversation.where)
            else:
                seen.add(prompt.text)
                prompts.append(prompt)
    if not stats.rows:
        raise DataError(f"{path}: the dataset is empty")
    if not prompts:
        raise DataError(f"{path}: no usable prompts out of {stats.rows} rows ({stats.summary()}); the prompts must "
                        f"fit cutoff_len - max_new_tokens = {max_prompt_tokens} tokens")
    return prompts, stats


# ---------------------------------------------------------------- answers
def sample(model, tokenizer, prompts: list[RolloutPrompt], *, per_prompt: int, prompt_type: str, max_new_tokens: int,
           temperature: float, top_p: float, seed: int, synced: bool) -> list[Completion]:
    """``per_prompt`` sampled answers to each prompt (in prompt order), from one seeded ``generate`` call.

    No repetition penalty and no top-k: the answers are samples of exactly the distribution whose
    log-probs the update uses. ``synced`` keeps ZeRO-3 ranks stepping together.
    """
    settings = GenerateConfig(prompt_type=prompt_type, max_new_tokens=max_new_tokens, do_sample=True,
                              temperature=temperature, top_p=top_p, top_k=0, repetition_penalty=1.0, seed=seed)
    requests = [Request(p.text) for p in prompts for _ in range(per_prompt)]
    answers = engine_answers(Models.around(model, tokenizer), requests, settings, synced_gpus=synced)
    return [Completion(tuple(a.token_ids), a.text, a.finish_reason in ("eos", "stop_string")) for a in answers]
