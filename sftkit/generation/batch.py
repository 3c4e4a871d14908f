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
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from sftkit import atomic
from sftkit.errors import GenerationError
from sftkit.generation.config import GenerateConfig
from sftkit.generation.correctness import accepted_answers, add_correctness
from sftkit.generation.engine import Request, generate_answers
from sftkit.generation.loading import (BASE, Models, adapter_fingerprint, load_models, parse_lora_weights,
                                       resolve_adapter)
from sftkit.generation.prompting import build_prompt, context_length
from sftkit.generation.report import write_report
from sftkit.generation.scoring import add_scores, load_scorer

# Settings that change what an answer is; a resume must match every one of them.
ANSWER_SETTINGS = ("base_model", "tokenizer_base_model", "prompt_type", "system_prompt", "stop", "load_8bit",
                   "load_4bit", "load_half", "temperature", "top_p", "top_k", "num_beams", "early_stopping",
                   "max_new_tokens", "min_new_tokens", "num_return_sequences", "repetition_penalty", "do_sample",
                   "seed", "max_context_tokens", "batch_size", "eval_sample")


# ---------------------------------------------------------------- prompt files

def read_prompts(path: str | os.PathLike, sample: int = 0, seed: int = 0) -> list[str]:
    """Prompts from a JSON list or JSONL file: strings, rows with 'prompt' or 'instruction' (+ 'input'),
    or ShareGPT conversations (their first human turn). ``sample`` > 0 draws that many, seeded."""
    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"--eval_prompts_file={path}: no such file")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GenerationError(f"--eval_prompts_file={path}: not UTF-8 text (byte {exc.start} is "
                              f"{exc.object[exc.start:exc.start + 1]!r}); save it as UTF-8") from None
    try:
        if path.suffix == ".jsonl":
            rows = [(n, json.loads(line)) for n, line in enumerate(raw.splitlines(), 1) if line.strip()]
            where = "line"
        else:
            data = json.loads(raw)
            if not isinstance(data, list):
                raise GenerationError(f"{path}: expected a JSON list of prompts, got a {type(data).__name__}")
            rows = list(enumerate(data, 1))
            where = "item"
    except json.JSONDecodeError as exc:
        raise GenerationError(f"{path}: not valid JSON{'L' if path.suffix == '.jsonl' else ''} ({exc})") from None
    prompts = [_prompt_of(row, f"{path} {where} {n}") for n, row in rows]
    _check_unicode(prompts, [n for n, _ in rows], path, where)
    if not prompts:
        raise GenerationError(f"{path}: holds no prompts")
    if sample < 0:
        raise GenerationError(f"--eval_sample={sample}: must be 0 (all prompts) or more")
    if 0 < sample < len(prompts):
        keep = sorted(random.Random(seed).sample(range(len(prompts)), sample))
        prompts = [prompts[i] for i in keep]
    return prompts


def _check_unicode(prompts: list[str], numbers: list[int], path: Path, where: str) -> None:
    """Prompts must be text a tokenizer can take: a JSON escape of half a surrogate pair (\\ud800) is not."""
    bad = [n for n, text in zip(numbers, prompts) if not _is_unicode(text)]
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
        raise GenerationError(f"{path}: {len(bad)} prompt(s) hold a lone surrogate escape (\\ud800-\\udfff, half "
                              f"of a UTF-16 pair), which is not text: {where} {shown}; fix or remove them")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _prompt_of(row, where: str) -> str:
    if isinstance(row, dict):
        if "prompt" in row:
            text = row["prompt"]
        elif "instruction" in row:
            text = "\n\n".join(str(part) for part in (row["instruction"], row.get("input")) if part)
        elif isinstance(row.get("conversations"), list):  # ShareGPT
            text = next((turn.get("value") for turn in row["conversations"]
                         if isinstance(turn, dict) and turn.get("from") in ("human", "user")), None)
            if text is None:
                raise GenerationError(f"{where}: a ShareGPT conversation without a human turn")
        else:
            raise GenerationError(f"{where}: a row needs 'prompt', 'instruction' or 'conversations' (ShareGPT); "
                                  f"it has {sorted(row)}")
    else:
        text = row
    if not isinstance(text, str) or not text.strip():
        raise GenerationError(f"{where}: empty or non-text prompt {text!r}")
    return text


# ---------------------------------------------------------------- answering

def answer_batch(models: Models, prompts: list[str], config: GenerateConfig, *, model: str | None = None,
                 on_rows: Callable[[list[dict]], None] | None = None, progress: bool = True,
                 label: str = "generate") -> list[dict]:
    """Answer single-turn prompts with ``model`` (None: the default one):
    ``[{prompt, response, new_tokens, finish_reason, seconds}]``.

    ``seconds`` is the answer's share of the wall time of the generate call that made it, so the
    seconds of all rows add up to the time spent generating.
    """
    model = models.resolve(model)
    context = context_length(models.model, config)
    rows: list[dict] = []
    repeats = config.num_return_sequences
    with tqdm(total=len(prompts), desc=label, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(prompts), config.batch_size):
            chunk = prompts[start:start + config.batch_size]
            requests = []
            for n, message in enumerate(chunk, start + 1):
                prompt = build_prompt(models.tokenizer, [], message, config, context)
                if prompt.warning():
                    warnings.warn(f"prompt {n}: {prompt.warning()}", stacklevel=2)
                requests.append(Request(prompt.text, model))
            answers = generate_answers(models, requests, config)
            new = [dict(prompt=chunk[i // repeats], response=a.text, new_tokens=a.new_tokens,
                        finish_reason=a.finish_reason, seconds=round(a.seconds / len(answers), 4))
                   for i, a in enumerate(answers)]
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
    expected = [(name, p) for name in names for p in prompts for _ in range(repeats)]
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
    print(f"generate: {len(rows)} answers from {len(names)} model(s), {tokens} new tokens in {seconds:.1f} s of "
          f"generation{score} -> {output}\nreport: {report}", file=sys.stderr)
    return answers

