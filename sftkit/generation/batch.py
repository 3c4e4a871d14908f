"""Batch / eval mode: answer every prompt of a file with every listed model, resumably, then report.

The answers file holds only what greedy decoding makes reproducible (model, prompt, response,
tokens, finish reason, score), so an interrupted run resumed to the end writes the same bytes as
an uninterrupted one; timings go to the report. A resume first checks that the progress file was
written with the same models, adapters (by content hash), prompt type and generation settings.
"""
from __future__ import annotations

import json
import os
import random
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from sftkit import atomic, rows
from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.correctness import accepted_answers, add_correctness
from sftkit.generation.engine import Request, generate_answers
from sftkit.generation.loading import (BASE, Models, adapter_fingerprint, load_models, parse_lora_weights,
                                       resolve_adapter)
from sftkit.generation.prompting import context_length, fit_prompt
from sftkit.generation.report import write_report
from sftkit.generation.scoring import add_scores, load_scorer
from sftkit.prompts import Turn, parse_tool_calls, tool_call_problem

# Settings that change what an answer is; a resume must match every one of them.
ANSWER_SETTINGS = ("base_model", "tokenizer_base_model", "prompt_type", "system_prompt", "stop", "load_8bit",
                   "load_4bit", "load_half", "temperature", "top_p", "top_k", "num_beams", "early_stopping",
                   "max_new_tokens", "min_new_tokens", "num_return_sequences", "repetition_penalty", "do_sample",
                   "seed", "max_context_tokens", "batch_size", "eval_sample")


# ---------------------------------------------------------------- prompt files

@dataclass
class EvalPrompt:
    """A conversation of a prompts file that awaits an answer: earlier turns (history), then the question
    (a human turn with its input, or a tool's result), written with the run's prompt type exactly as
    training writes the same conversation up to its answer."""

    turns: list[Turn]
    tools: list[dict] | None = None

    def _split(self) -> int:
        at = len(self.turns)
        while at and self.turns[at - 1][0] in ("human", "input", "tool"):
            at -= 1
        return at

    @property
    def text(self) -> str:
        """The question, as the answers file and the report show it."""
        return "\n\n".join(text for _, text in self.turns[self._split():])

    @property
    def history(self) -> list[Turn]:
        return self.turns[:self._split()]


def read_prompts(path: str | os.PathLike, sample: int = 0, seed: int = 0) -> list[EvalPrompt]:
    """The prompts of a file in any format :mod:`sftkit.rows` reads (strings, ``{"prompt"}`` rows,
    alpaca, ShareGPT, messages, markup, OpenAssistant, pairs): multi-turn rows keep their history. Rows
    that give no prompt are counted by reason (said on stderr). ``sample`` > 0 draws that many, seeded."""
    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"--eval_prompts_file={path}: no such file")
    skipped = rows.Skipped()
    prompts = []
    for unit in rows.read(path, options=rows.ReadOptions(mode="prompts", oasst_langs=None)):
        if unit.reason and not unit.conversations:
            skipped.skip(unit.reason, unit.where)
        for conversation in unit.conversations:
            turns = rows.question_turns(conversation)
            if turns is None:
                skipped.skip("no_question", conversation.where)
            else:
                prompts.append(EvalPrompt(turns, conversation.tools))
    if not prompts:
        raise GenerationError(f"{path}: holds no prompts" + (f"; {skipped.summary()}" if skipped.skipped else ""))
    if skipped.skipped:
        print(f"generate: {path}: {skipped.summary()}", file=sys.stderr)
    if sample < 0:
        raise GenerationError(f"--eval_sample={sample}: must be 0 (all prompts) or more")
    if 0 < sample < len(prompts):
        keep = sorted(random.Random(seed).sample(range(len(prompts)), sample))
        prompts = [prompts[i] for i in keep]
    return prompts


# ---------------------------------------------------------------- answering

def tool_call_fields(text: str, tools: list[dict], prompt_type: str) -> dict:
    """What an answer to a prompt with tools did: ``tool_calls`` (the calls read from it, ``{name,
    arguments}``) and ``tool_call``: ``valid``, ``no_call``, or why its call is not valid
    (:func:`sftkit.prompts.tool_call_problem`: ``bad_call_json``, ``unknown_function``, ``missing_argument``)."""
    rest, calls = parse_tool_calls(text, prompt_type)
    problem = tool_call_problem(rest, calls, tools)
    return {"tool_calls": calls, "tool_call": problem or ("valid" if calls else "no_call")}


def answer_batch(models: Models, prompts: list[EvalPrompt | str], config: GenerateConfig, *,
                 model: str | None = None, on_rows: Callable[[list[dict]], None] | None = None,
                 progress: bool = True, label: str = "generate") -> list[dict]:
    """Answer prompts (a string is a single question) with ``model`` (None: the default one):
    ``[{prompt[, history], response, new_tokens, finish_reason, seconds}]``, and for a prompt with tools
    what its answer called (:func:`tool_call_fields`).

    ``seconds`` is the answer's share of the wall time of the generate call that made it, so the
    seconds of all rows add up to the time spent generating.
    """
    model = models.resolve(model)
    context = context_length(models.model, config)
    rows: list[dict] = []
    repeats = config.num_return_sequences
    prompts = [EvalPrompt([("human", p)]) if isinstance(p, str) else p for p in prompts]
    with tqdm(total=len(prompts), desc=label, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(prompts), config.batch_size):
            chunk = prompts[start:start + config.batch_size]
            requests = []
            for n, question in enumerate(chunk, start + 1):
                if not question.text.strip():
                    raise GenerationError(f"prompt {n}: empty message")
                prompt = fit_prompt(models.tokenizer, question.turns, config, context, question.tools)
                if prompt.warning():
                    warnings.warn(f"prompt {n}: {prompt.warning()}", stacklevel=2)
                requests.append(Request(prompt.text, model))
            answers = generate_answers(models, requests, config)
            new = []
            for i, a in enumerate(answers):
                question = chunk[i // repeats]
                new.append(dict(prompt=question.text, **({"history": question.history} if question.history else {}),
                                response=a.text, new_tokens=a.new_tokens, finish_reason=a.finish_reason,
                                seconds=round(a.seconds / len(answers), 4),
                                **(tool_call_fields(a.text, question.tools, config.prompt_type)
                                   if question.tools else {})))
            rows += new
            if on_rows:
                on_rows(new)
            bar.update(len(chunk))
    return rows


# ---------------------------------------------------------------- resumable runs

def progress_path(output: Path) -> Path:
    return output.with_name(output.name + ".partial.jsonl")


def run_identity(config: GenerateConfig) -> dict:
    """What made the answers: models (adapters by path and content hash), prompt type, generation settings."""
    models = {}
    for name, path in parse_lora_weights(config.lora_weights) or [(BASE, None)]:
        if path:
            resolved = resolve_adapter(path)
            models[name] = {"path": str(Path(resolved).resolve()), "sha256": adapter_fingerprint(resolved)}
        else:
            models[name] = None
    settings = asdict(config)
    return {"models": models, **{key: settings[key] for key in ANSWER_SETTINGS}}


def _differences(saved: dict, current: dict) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            out.append(f"{key}: {json.dumps(saved.get(key))} then, {json.dumps(current.get(key))} now")
    return out


def read_progress(progress: Path, prompts_by_model: list[tuple[str, str]], identity: dict) -> list[dict]:
    """Rows finished by an interrupted run with the same identity, checked to answer the same prompts."""
    if not progress.is_file():
        return []
    lines = progress.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if "identity" not in header:
        raise GenerationError(f"{progress} was not written by this version of generate.py (no settings "
                              f"recorded); delete it to start over")
    changed = _differences(header["identity"], identity)
    if changed:
        raise GenerationError(f"{progress} holds answers made with other settings; "
                              f"{'; '.join(changed)}. Rerun with the earlier settings to resume, or delete "
                              f"{progress} to start over")
    rows = []
    for line in lines[1:]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by the interruption: redo it
    for n, row in enumerate(rows):
        if n >= len(prompts_by_model) or (row.get("model"), row.get("prompt")) != prompts_by_model[n]:
            raise GenerationError(f"{progress} holds answers to other prompts (row {n + 1}); delete it to "
                                  f"start over")
    return rows


def _check_writable(output: Path) -> None:
    """Fail before anything loads when the answers, progress file and report cannot be written there."""
    if not output.parent.is_dir():
        raise GenerationError(f"--eval_output_file={output}: directory {output.parent} does not exist")
    probe = atomic.temp_path(output)
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise GenerationError(f"--eval_output_file={output}: cannot write in {output.parent} ({exc.strerror}); "
                              f"choose a writable place") from None


def run_batch(config: GenerateConfig, models: Models | None = None) -> list[dict]:
    """Batch mode: answer every prompt with every model of --lora_weights into eval_output_file, then
    write the report next to it. Resumes an interrupted run made with the same settings."""
    if not config.eval_output_file:
        raise GenerationError("--eval_prompts_file needs --eval_output_file (where to write the answers)")
    output = Path(config.eval_output_file)
    if output.exists() and not config.overwrite:
        raise GenerationError(f"--eval_output_file={output} exists; pass --overwrite=True to replace it or "
                              f"choose another file")
    _check_writable(output)
    atomic.clean_stale(output.parent)
    prompts = read_prompts(config.eval_prompts_file, config.eval_sample, config.seed or 0)
    names = [name for name, _ in parse_lora_weights(config.lora_weights)] or [BASE]
    repeats = config.num_return_sequences
    expected = [(name, p.text) for name in names for p in prompts for _ in range(repeats)]
    identity = run_identity(config)
    progress = progress_path(output)
    done = read_progress(progress, expected, identity)
    if done:
        print(f"sftkit: resuming {output}: {len(done)} of {len(expected)} answers already made", file=sys.stderr)
    scorer = load_scorer(config) if config.score_model else None  # fail before generating, not after
    if models is None:
        models = load_models(config)
    # Rewritten whole first (a kill now leaves the old progress or the new, never a truncated one), then appended.
    atomic.write_text(progress, "".join(json.dumps(line, ensure_ascii=False) + "\n"
                                        for line in [{"identity": identity}, *done]))
    with progress.open("a", encoding="utf-8") as fh:
        rows = list(done)
        for name in names:
            finished = sum(1 for row in done if row["model"] == name) // repeats

            def save(new_rows, name=name):
                for row in new_rows:
                    fh.write(json.dumps({"model": name, **row}, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

            new = answer_batch(models, prompts[finished:], config, model=name, on_rows=save, label=name)
            rows += [{"model": name, **row} for row in new]
    if scorer is not None:
        add_scores(rows, scorer)
    add_correctness(rows, accepted_answers(config.eval_prompts_file))
    answers = [{key: value for key, value in row.items() if key != "seconds"} for row in rows]
    atomic.write_json(output, answers)
    report = write_report(rows, output, config)
    progress.unlink()
    seconds = sum(r["seconds"] for r in rows)
    tokens = sum(r["new_tokens"] for r in rows)
    score = f", mean score {sum(r['score'] for r in rows) / len(rows):.3f}" if scorer is not None else ""
    checked = [r["correct"] for r in rows if "correct" in r]
    score += f", {sum(checked)}/{len(checked)} correct" if checked else ""
    called = [r["tool_call"] for r in rows if "tool_call" in r]
    score += f", {called.count('valid')}/{len(called)} valid tool calls" if called else ""
    print(f"generate: {len(rows)} answers from {len(names)} model(s), {tokens} new tokens in {seconds:.1f} s of "
          f"generation{score} -> {output}\nreport: {report}", file=sys.stderr)
    return answers

