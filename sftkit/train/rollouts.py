"""Rollouts of the online stages (ppo, grpo): the prompts of a training file, and the policy's answers to them.

Prompts are the prompt part of any row training reads: SFT rows (every turn before the last answer),
preference pairs (their prompt), and plain prompt lists (strings, or rows with ``prompt``), rendered
with the run's prompt type by :func:`sftkit.prompts.render_prompt`, the function generate.py renders with.

Answers come from the generation engine (sftkit.generation), as generate.py makes them: the same stop
strings and left padding, on the weights being trained (no reload), sampled. This module is the one
place online training calls the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

from sftkit.errors import DataError
from sftkit.generation import GenerateConfig, Models, Request
from sftkit.generation import generate_answers as engine_answers
from sftkit.prompts import PromptError, Turn, encode, get_prompt_type, join_turns, render_prompt
from sftkit.train.data import ReadStats, _messages_to_turns, read_rows, row_text, usable_rows
from sftkit.train.preference import _turns, row_to_pair, text_to_turns


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
def prompt_turns(row: dict) -> list[Turn]:
    """The prompt part of one row: its turns up to the last human message (and that message's input)."""
    if row.get("chosen") is not None or row.get("rejected") is not None:
        return row_to_pair(row).prompt
    if row.get("prompt") is not None:
        turns = _turns(row["prompt"])
    elif row.get("instruction") is not None:
        turns = [("human", str(row["instruction"]).strip())]
        if str(row.get("input") or "").strip():
            turns.append(("input", str(row["input"]).strip()))
    elif isinstance(row.get("messages", row.get("conversations")), list):
        turns = _messages_to_turns(row.get("messages", row.get("conversations")))
    elif row_text(row) is not None:
        turns = text_to_turns(row_text(row))
    else:
        raise DataError(f"no prompt (found {sorted(row)[:8]}); expected a preference pair, 'prompt', 'instruction', "
                        f"'messages' or 'input'/'text', or map yours with --data_col_dict")
    if str(row.get("system") or "").strip():
        turns.insert(0, ("system", str(row["system"]).strip()))
    if isinstance(row.get("context"), str) and row["context"]:
        turns.insert(0, ("context", row["context"]))
    humans = [i for i, (role, text) in enumerate(turns) if role == "human" and text]
    if not humans:
        raise DataError("no human message to answer")
    end = humans[-1] + 1
    while end < len(turns) and turns[end][0] == "input":
        end += 1
    return turns[:end]


def render(turns: list[Turn], prompt_type: str, tokenizer) -> RolloutPrompt:
    """The prompt text generation answers (as generate.py renders a conversation), with its ids."""
    last = max(i for i, (role, _) in enumerate(turns) if role == "human")
    system = "\n".join(text for role, text in turns[:last] if role == "system") or None
    history = [turn for turn in turns[:last] if turn[0] != "system"]
    extra = "\n".join(text for role, text in turns[last + 1:] if role == "input") or None
    text = render_prompt(history, turns[last][1], prompt_type, tokenizer=tokenizer, system=system, input=extra)
    earlier = [turn for turn in history if turn[0] in ("human", "bot")]
    question = turns[last][1] if not earlier else join_turns(earlier + [("human", turns[last][1])])
    return RolloutPrompt(text, tuple(encode(tokenizer, text, prompt_type)["input_ids"]), question)


def read_prompts(path: str, col_dict: dict, prompt_type: str, tokenizer, max_prompt_tokens: int
                 ) -> tuple[list[RolloutPrompt], ReadStats]:
    """Every distinct prompt of ``path`` that fits ``max_prompt_tokens``; the others counted by reason."""
    if get_prompt_type(prompt_type).name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise PromptError("--prompt_type=chat needs a tokenizer with a chat template; this one has none")
    rows = [(where, {"prompt": row} if isinstance(row, str) else row) for where, row in read_rows(path)]
    if not rows:
        raise DataError(f"{path}: the dataset is empty")
    stats = ReadStats(rows=len(rows))
    prompts, seen = [], set()
    for _, prompt in usable_rows(rows, col_dict, stats, lambda row, where: render(prompt_turns(row), prompt_type,
                                                                                 tokenizer)):
        if len(prompt.ids) > max_prompt_tokens:
            stats.skip(f"prompt longer than cutoff_len - max_new_tokens = {max_prompt_tokens} tokens")
        elif prompt.text in seen:
            stats.skip("the same prompt again")
        else:
            seen.add(prompt.text)
            prompts.append(prompt)
    if not prompts:
        raise DataError(f"{path}: no usable prompts out of {len(rows)} rows ({stats.summary()}); first problem: "
                        f"{stats.first_problem or 'every prompt was too long or repeated'}")
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
