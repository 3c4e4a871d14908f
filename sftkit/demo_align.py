"""The alignment demo behind `make demo-align`: ``finetune.py rlhf`` (SFT -> reward model -> GRPO or PPO)
and DPO on the bundled preference set, then base, SFT, DPO and RL answers to held-out questions with
known short answers: reward-model score, share correct, answer length, how many stop by themselves,
and KL to the SFT model.

The reward model is trained on the same 72 pairs the other steps use, so its score shows the pipeline
working, not an independent judgement; correctness on the held-out questions is the check it cannot
fake. Like `make demo`, every step is the command a user would type, printed before it runs. Outputs
go to a fresh ``demo_out/align-<timestamp>/`` folder.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sftkit import atomic, flags
from sftkit.demo import banner, one_line, run, use_bf16
from sftkit.flags import flag
from sftkit.generation import GenerateConfig, build_prompt, context_length, load_models
from sftkit.generation.report import summarize
from sftkit.models import DEFAULT_BASE_MODEL
from sftkit.prompts import encode
from sftkit.train.preference import load_pairs

SHOWN = 6  # held-out questions whose answers are printed


@dataclass
class AlignDemoConfig:
    base_model: str = flag(DEFAULT_BASE_MODEL, "Model to align (an alias, hub id or local dir).")
    out_root: str = flag("demo_out", "Each run writes to a new <out_root>/align-<timestamp>/ folder.")
    preferences: str = flag("data/preference_sample.json", "Preference pairs: SFT on their chosen answers, the "
                                                           "reward model, DPO, and the RL prompts.")
    heldout_path: str = flag("data/correctness_heldout.json", "Held-out questions with accepted short answers, "
                                                              "answered and scored at the end.")
    rl: str = flag("grpo", "The RL step of finetune.py rlhf: grpo or ppo.")
    sft_steps: int = flag(12, "LoRA SFT steps on the chosen answers.")
    rm_steps: int = flag(16, "Reward-model steps.")
    rl_steps: int = flag(10, "RL steps on top of the SFT adapter (one update each, 16 answers: 4 prompts x 4).")
    dpo_steps: int = flag(12, "DPO steps on top of the SFT adapter.")
    beta: float = flag(0.1, "DPO beta.")
    rollouts_per_prompt: int = flag(4, "RL answers sampled per prompt (GRPO's group size).")
    rl_learning_rate: float = flag(1e-3, "RL learning rate.")
    kl_coef: float = flag(0.05, "RL KL penalty to the SFT model.")
    max_new_tokens: int = flag(48, "Longest generated answer, in the RL rollouts and at the end.")
    bf16: str = flag("auto", "Train in bfloat16 (on a CPU: autocast over float32 weights): true, false, or auto = "
                             "where the hardware has it (as make demo).")


def chosen_as_sft_rows(preferences: Path, target: Path) -> None:
    """SFT data from the preferred answers (the usual first step before DPO or RLHF)."""
    pairs, _ = load_pairs(str(preferences))
    rows, seen = [], set()
    for pair in pairs:
        turns = tuple(pair.prompt + pair.chosen)
        if turns not in seen:
            seen.add(turns)
            rows.append({"messages": [{"role": {"human": "user", "bot": "assistant"}.get(r, r), "content": t}
                                      for r, t in turns]})
    atomic.write_text(target, json.dumps(rows, indent=1) + "\n")


@torch.no_grad()
def kl_to_reference(models, settings: GenerateConfig, rows: list[dict], reference: str) -> dict[str, float]:
    """Per model: the mean over prompts of sum_t KL(p_model(.|x, y<t) || p_reference(.|x, y<t)), exact at
    every position of the model's own answer y (re-tokenized from its text), in nats."""
    tokenizer, model = models.tokenizer, models.model
    context = context_length(model, settings)

    def next_token_logprobs(name: str, ids: torch.Tensor, start: int) -> torch.Tensor:
        if models.resolve(name) == models.base:
            with model.disable_adapter():
                logits = model(input_ids=ids).logits
        else:
            model.set_adapter(name)
            logits = model(input_ids=ids).logits
        return torch.log_softmax(logits[0, start - 1:-1].float(), dim=-1)

    totals: dict[str, list[float]] = {}
    for row in rows:
        if not row["response"]:
            totals.setdefault(row["model"], []).append(0.0)
            continue
        prompt = build_prompt(tokenizer, [], row["prompt"], settings, context).text
        start = len(encode(tokenizer, prompt, settings.prompt_type)["input_ids"])
        ids = torch.tensor([encode(tokenizer, f"{prompt} {row['response']}", settings.prompt_type)["input_ids"]])
        mine = next_token_logprobs(row["model"], ids, start)
        theirs = next_token_logprobs(reference, ids, start)
        totals.setdefault(row["model"], []).append(float((mine.exp() * (mine - theirs)).sum()))
    return {name: sum(values) / len(values) for name, values in totals.items()}


def main(config: AlignDemoConfig) -> None:
    started = time.monotonic()
    out = Path(config.out_root) / time.strftime("align-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    python = sys.executable
    run_dir, dpo_dir = out / "rlhf", out / "dpo"
    sft_dir, rm_dir, rl_dir = run_dir / "sft", run_dir / "rm", run_dir / config.rl
    common = {"cutoff_len": 256, "micro_batch_size": 4, "batch_size": 8, "report_to": "none", "save_steps": 4,
              "bf16": use_bf16(config.bf16)}

    banner(f"1/4 finetune.py rlhf: SFT on the chosen answers of {config.preferences} -> reward model on its pairs "
           f"-> {config.rl.upper()} from the SFT adapter, rewarded by that model")
    sft_rows = out / "sft_rows.json"
    chosen_as_sft_rows(Path(config.preferences), sft_rows)
    rl_flags = {"max_steps": config.rl_steps, "learning_rate": config.rl_learning_rate, "batch_size": 16,
                "micro_batch_size": 8, "rollouts_per_prompt": config.rollouts_per_prompt,
                "max_new_tokens": config.max_new_tokens, "temperature": 0.8, "kl_coef": config.kl_coef,
                "lora_dropout": 0.0, "warmup_steps": 0, "lr_scheduler": "constant"}
    run([python, "finetune.py", "rlhf", f"--base_model={config.base_model}", f"--sft_data={sft_rows}",
         f"--preference_data={config.preferences}", f"--rl={config.rl}", f"--output_dir={run_dir}",
         f"--train_flags={json.dumps(common)}",
         f"--sft_flags={json.dumps({'max_steps': config.sft_steps, 'learning_rate': 1e-3, 'val_set_size': 0})}",
         f"--rm_flags={json.dumps({'max_steps': config.rm_steps, 'learning_rate': 1e-3, 'val_set_size': 8})}",
         f"--rl_flags={json.dumps(rl_flags)}"])
    rm_metrics = json.loads((rm_dir / "metrics.json").read_text())
    rl_history = [h for h in json.loads((rl_dir / "metrics.json").read_text())["history"] if "reward" in h]

    banner("2/4 DPO on top of the SFT adapter (reference: the SFT adapter, frozen), for comparison")
    run([python, "finetune.py", *(f"--{k}={v}" for k, v in common.items()), "--stage=dpo",
         f"--base_model={config.base_model}", f"--data_path={config.preferences}", f"--lora_weights={sft_dir}",
         f"--output_dir={dpo_dir}", f"--max_steps={config.dpo_steps}", f"--beta={config.beta}",
         "--learning_rate=5e-4", "--val_set_size=8"])
    dpo_metrics = json.loads((dpo_dir / "metrics.json").read_text())

    banner("3/4 held-out questions with known answers: base, SFT, DPO and RL answers, scored by the reward model")
    target = out / "answers.json"  # one run, four models on one base: answers, scores, correctness and a report
    models = f"base=,sft={sft_dir},dpo={dpo_dir},{config.rl}={rl_dir}"
    run([python, "generate.py", f"--base_model={config.base_model}", f"--lora_weights={models}",
         "--prompt_type=human_bot", f"--eval_prompts_file={config.heldout_path}", f"--eval_output_file={target}",
         f"--score_model={rm_dir}", f"--max_new_tokens={config.max_new_tokens}", "--do_sample=False",
         "--batch_size=8"])
    rows = json.loads(target.read_text())

    banner("4/4 KL of each model's answers to the SFT model, and the table")
    settings = GenerateConfig(base_model=config.base_model, lora_weights=models, prompt_type="human_bot",
                              max_new_tokens=config.max_new_tokens)
    kl = kl_to_reference(load_models(settings), settings, rows, reference="sft")
    by_model: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["prompt"]] = row
    prompts = list(next(iter(by_model.values())))
    for prompt in prompts[:SHOWN]:
        print(f"\n<human>: {prompt}")
        for label, answers in by_model.items():
            row = answers[prompt]
            print(f"  {label:<5} {row['score']:.3f} [{'x' if row.get('correct') else ' '}] "
                  f"{one_line(row['response'], 140)}")
    summary = summarize(rows)
    print(f"\n{len(prompts)} held-out questions ({config.heldout_path}); reward model trained on the same "
          f"{config.preferences} pairs as DPO and RL (validation pairwise accuracy "
          f"{rm_metrics.get('eval_accuracy', float('nan')):.2f})\n")
    print(f"{'model':<6} {'RM score [95% CI]':>22} {'correct [95% CI]':>22} {'tokens/answer':>14} "
          f"{'stopped':>8} {'KL to SFT':>10}")
    for label, s in summary.items():
        low, high = s["mean_ci"]
        correct = (f"{s['correct_share']:>7.2f} [{s['correct_ci'][0]:.2f}, {s['correct_ci'][1]:.2f}]"
                   if "correct" in s else f"{'–':>22}")
        print(f"{label:<6} {s['mean_score']:>7.3f} [{low:.3f}, {high:.3f}] {correct} {s['mean_tokens']:>14.1f} "
              f"{s['stopped']:>4}/{s['answers']:<3} {kl[label]:>10.2f}")
    print(f"\n{config.rl.upper()}: reward (mean RM score of its samples) {rl_history[0]['reward']:.3f} at step 1 -> "
          f"{rl_history[-1]['reward']:.3f} at step {rl_history[-1]['step']}, KL to SFT of its samples "
          f"{rl_history[-1]['kl']:.2f} nats; DPO: validation reward accuracy "
          f"{dpo_metrics.get('eval_accuracy', float('nan')):.2f}")
    print(f"report: {out / 'answers_report' / 'report.md'}")
    print(f"\nalign demo finished in {(time.monotonic() - started) / 60:.1f} min; outputs in {out}")
    atomic.write_json(out / "summary.json", {label: {"mean_score": s["mean_score"], "mean_ci": s["mean_ci"],
                                                     "correct_share": s.get("correct_share"),
                                                     "mean_tokens": s["mean_tokens"], "stopped": s["stopped"],
                                                     "answers": s["answers"], "kl_to_sft": kl[label]}
                                             for label, s in summary.items()})


if __name__ == "__main__":
    flags.main(AlignDemoConfig, main, prog="python -m sftkit.demo_align",
               summary="finetune.py rlhf (SFT, reward model, GRPO/PPO) and DPO on the bundled preference set; "
                       "reward score, correctness, length, stopping and KL to SFT of every model.")
