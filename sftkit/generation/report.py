"""The evaluation report of a batch run: which model answers better, by how much, and how fast.

Per model: the reward-score histogram, mean and median score with bootstrap 95% intervals, answer
length and tokens/s, and, for prompts with known answers, the share answered correctly; for prompts
with tools, how many answers made a call and how many calls were valid (a listed function, the
required arguments given); for every pair of models the win rate by score on the same prompts; and a
few answers side by side. Markdown plus PNG plots (matplotlib, Agg backend: no display needed),
written as one directory next to the answers file.
"""
from __future__ import annotations

from collections import Counter
from itertools import combinations
from pathlib import Path

from sftkit import atomic
from sftkit.generation.config import GenerateConfig

BOOTSTRAP_SAMPLES = 2000
EXAMPLES = 3


def report_dir(output: Path) -> Path:
    """``answers.json`` -> ``answers_report/``."""
    return output.with_name(output.stem + "_report")


def bootstrap_interval(values: list[float], statistic, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of ``statistic`` over ``values`` (seeded: reproducible)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return float(data.mean()), float(data.mean())
    rng = np.random.default_rng(seed)
    draws = statistic(data[rng.integers(0, len(data), size=(samples, len(data)))], axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def win_rate(scores_a: list[float], scores_b: list[float]) -> float:
    """Share of prompts where a's answer scores above b's (ties count half)."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b))
    return wins / len(scores_a) if scores_a else 0.0


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per model: answers, score statistics (when scored), words and tokens per answer, tokens/s."""
    import numpy as np

    models: dict[str, list[dict]] = {}
    for row in rows:
        models.setdefault(row.get("model", "model"), []).append(row)
    summary = {}
    for name, answers in models.items():
        tokens = sum(r["new_tokens"] for r in answers)
        seconds = sum(r.get("seconds", 0.0) for r in answers)
        stats = dict(answers=len(answers), mean_tokens=tokens / len(answers),
                     mean_words=sum(len(r["response"].split()) for r in answers) / len(answers),
                     tokens_per_second=tokens / seconds if seconds else None,
                     stopped=sum(r.get("finish_reason") in ("eos", "stop_string") for r in answers))
        if all("correct" in r for r in answers):  # questions with known answers (sftkit/generation/correctness.py)
            correct = [float(r["correct"]) for r in answers]
            stats.update(correct=correct, correct_share=float(np.mean(correct)),
                         correct_ci=bootstrap_interval(correct, np.mean))
        outcomes = Counter(r["tool_call"] for r in answers if "tool_call" in r)
        if outcomes:  # answers to prompts with tools (sftkit/generation/batch.py: tool_call_fields)
            stats.update(tool_prompts=sum(outcomes.values()), made_call=sum(outcomes.values()) - outcomes["no_call"],
                         valid_calls=outcomes["valid"],
                         invalid_calls={k: v for k, v in sorted(outcomes.items()) if k not in ("valid", "no_call")})
        if all("score" in r for r in answers):
            scores = [r["score"] for r in answers]
            stats.update(scores=scores, mean_score=float(np.mean(scores)), median_score=float(np.median(scores)),
                         mean_ci=bootstrap_interval(scores, np.mean),
                         median_ci=bootstrap_interval(scores, np.median))
        summary[name] = stats
    return summary


def _plots(summary: dict[str, dict], rows: list[dict], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    names = list(summary)
    scored = [n for n in names if "scores" in summary[n]]
    if scored:
        fig, axes = plt.subplots(1, len(scored), figsize=(4 * len(scored), 3), squeeze=False, sharey=True)
        for ax, name in zip(axes[0], scored):
            ax.hist(summary[name]["scores"], bins=20, range=(0, 1), color="tab:orange", edgecolor="white")
            ax.axvline(summary[name]["mean_score"], color="black", linestyle="--", linewidth=1)
            ax.set_title(f"{name} (mean {summary[name]['mean_score']:.3f})")
            ax.set_xlabel("reward score")
        axes[0][0].set_ylabel("answers")
        fig.tight_layout()
        fig.savefig(directory / "scores.png", dpi=100)
        plt.close(fig)
        made.append("scores.png")
    fig, ax = plt.subplots(figsize=(5, 3))
    for name in names:
        ax.hist([r["new_tokens"] for r in rows if r.get("model", "model") == name], bins=20, alpha=0.6, label=name)
    ax.set_xlabel("new tokens per answer")
    ax.set_ylabel("answers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "lengths.png", dpi=100)
    plt.close(fig)
    made.append("lengths.png")
    return made


def render_markdown(summary: dict[str, dict], rows: list[dict], config: GenerateConfig, plots: list[str]) -> str:
    names = list(summary)
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    lines = [f"# Evaluation of {config.base_model}", "",
             f"{len(prompts)} prompts from `{config.eval_prompts_file}`, answered by {len(names)} model(s) "
             f"(prompt type `{config.prompt_type}`, max_new_tokens {config.max_new_tokens}, "
             f"{'sampling' if config.do_sample else 'greedy' if config.num_beams == 1 else 'beam search'})"
             + (f", scored by `{config.score_model}`." if config.score_model else "."), "",
             "| model | answers | mean score [95% CI] | median score [95% CI] | tokens/answer | words/answer | "
             "stopped by itself | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        mean = f"{s['mean_score']:.3f} [{s['mean_ci'][0]:.3f}, {s['mean_ci'][1]:.3f}]" if "scores" in s else "–"
        median = (f"{s['median_score']:.3f} [{s['median_ci'][0]:.3f}, {s['median_ci'][1]:.3f}]"
                  if "scores" in s else "–")
        speed = f"{s['tokens_per_second']:.1f}" if s["tokens_per_second"] else "–"
        lines.append(f"| {name} | {s['answers']} | {mean} | {median} | {s['mean_tokens']:.1f} | "
                     f"{s['mean_words']:.1f} | {s['stopped']}/{s['answers']} | {speed} |")
    lines += _correctness_section(summary)
    lines += _tool_call_section(summary)
    scored = [n for n in names if "scores" in summary[n]]
    if len(scored) > 1:
        lines += ["", "## Win rate by score", "",
                  "Share of prompts where the row model's answer scores above the column model's (ties count half).",
                  "", "| | " + " | ".join(scored) + " |", "|---" * (len(scored) + 1) + "|"]
        for a in scored:
            cells = ["–" if a == b else f"{win_rate(summary[a]['scores'], summary[b]['scores']):.2f}" for b in scored]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        best = max(combinations(scored, 2), key=lambda p: abs(summary[p[0]]["mean_score"] - summary[p[1]]["mean_score"]))
        lines += ["", f"Largest gap: {best[0]} {summary[best[0]]['mean_score']:.3f} vs "
                      f"{best[1]} {summary[best[1]]['mean_score']:.3f} mean score."]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Answers side by side", ""]
    by_key = {(r.get("model", "model"), r["prompt"]): r for r in rows}
    for prompt in prompts[:EXAMPLES]:
        lines += [f"**Prompt:** {_cell(prompt)}", "", "| model | answer | score |", "|---|---|---|"]
        for name in names:
            row = by_key.get((name, prompt))
            if row:
                score = f"{row['score']:.3f}" if "score" in row else "–"
                lines.append(f"| {name} | {_cell(row['response'])} | {score} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _correctness_section(summary: dict[str, dict]) -> list[str]:
    """Correct answers beside score, length and stopping: a model that games the reward model shows it here."""
    checked = [n for n, s in summary.items() if "correct" in s]
    if not checked:
        return []
    lines = ["", "## Correctness on questions with known answers", "",
             "An answer is correct when it contains an accepted answer (sftkit/generation/correctness.py). A higher "
             "reward score with fewer correct answers, longer answers or fewer that stop by themselves is the "
             "policy gaming the reward model.", "",
             "| model | correct | share correct [95% CI] | mean score | tokens/answer | stopped by itself |",
             "|---|---|---|---|---|---|"]
    for name in checked:
        s = summary[name]
        score = f"{s['mean_score']:.3f}" if "scores" in s else "–"
        lines.append(f"| {name} | {int(sum(s['correct']))}/{len(s['correct'])} | {s['correct_share']:.2f} "
                     f"[{s['correct_ci'][0]:.2f}, {s['correct_ci'][1]:.2f}] | {score} | {s['mean_tokens']:.1f} | "
                     f"{s['stopped']}/{s['answers']} |")
    return lines


def _tool_call_section(summary: dict[str, dict]) -> list[str]:
    """Per model, of its answers to prompts with tools: how many made a call, how many calls were valid."""
    called = [n for n, s in summary.items() if "tool_prompts" in s]
    if not called:
        return []
    lines = ["", "## Tool calls", "",
             "Answers to prompts with tools. A call is valid when it parses, names a listed function and gives "
             "its required arguments; an answer with an invalid call counts as making a call.", "",
             "| model | answers to prompts with tools | made a call | valid calls | invalid, by reason |",
             "|---|---|---|---|---|"]
    for name in called:
        s = summary[name]
        invalid = ", ".join(f"{reason}: {n}" for reason, n in s["invalid_calls"].items()) or "–"
        lines.append(f"| {name} | {s['tool_prompts']} | {s['made_call']} | {s['valid_calls']} | {invalid} |")
    return lines


def _cell(text: str, width: int = 400) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def write_report(rows: list[dict], output: Path, config: GenerateConfig) -> Path:
    """Write ``<answers>_report/report.md`` and its plots (the directory is replaced whole); its path."""
    summary = summarize(rows)
    target = report_dir(Path(output))
    with atomic.replacing(target) as tmp:
        tmp.mkdir()
        plots = _plots(summary, rows, tmp)
        (tmp / "report.md").write_text(render_markdown(summary, rows, config, plots), encoding="utf-8")
    return target / "report.md"
