"""The alignment demo behind `make demo-align`: SFT → reward model → DPO on the bundled preference set,
then the reward model's scores of base, SFT and DPO answers to held-out questions.

Like `make demo`, every step is the command a user would type, printed before it runs. Outputs go to
a fresh ``demo_out/align-<timestamp>/`` folder.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sftkit import atomic, flags
from sftkit.demo import banner, one_line, run
from sftkit.flags import flag
from sftkit.models import DEFAULT_BASE_MODEL
from sftkit.train.preference import load_pairs


@dataclass
class AlignDemoConfig:
    base_model: str = flag(DEFAULT_BASE_MODEL, "Model to align (an alias, hub id or local dir).")
    out_root: str = flag("demo_out", "Each run writes to a new <out_root>/align-<timestamp>/ folder.")
    preferences: str = flag("data/preference_sample.json", "Preference pairs for the reward model and DPO.")
    heldout_path: str = flag("data/preference_heldout.json", "Held-out questions answered and scored at the end.")
    sft_steps: int = flag(12, "LoRA SFT steps on the chosen answers.")
    rm_steps: int = flag(16, "Reward-model steps.")
    dpo_steps: int = flag(16, "DPO steps on top of the SFT adapter.")
    beta: float = flag(0.1, "DPO beta.")
    max_new_tokens: int = flag(48, "Longest generated answer.")


def chosen_as_sft_rows(preferences: Path, target: Path) -> None:
    """SFT data from the preferred answers (the usual first step before DPO)."""
    pairs, _ = load_pairs(str(preferences))
    rows, seen = [], set()
    for pair in pairs:
        key = (tuple(pair.prompt), pair.chosen)
        if key not in seen:
            seen.add(key)
            rows.append({"messages": [{"role": {"human": "user", "bot": "assistant"}.get(r, r), "content": t}
                                      for r, t in pair.prompt] + [{"role": "assistant", "content": pair.chosen}]})
    atomic.write_text(target, json.dumps(rows, indent=1) + "\n")


def main(config: AlignDemoConfig) -> None:
    started = time.monotonic()
    out = Path(config.out_root) / time.strftime("align-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=False)
    python = sys.executable
    sft_dir, rm_dir, dpo_dir = out / "sft", out / "rm", out / "dpo"
    common = [f"--base_model={config.base_model}", "--report_to=none", "--save_steps=1000000", "--cutoff_len=256",
              "--micro_batch_size=4", "--batch_size=8"]

    banner(f"1/4 SFT: LoRA on the preferred answers of {config.preferences}")
    sft_rows = out / "sft_rows.json"
    chosen_as_sft_rows(Path(config.preferences), sft_rows)
    run([python, "finetune.py", *common, f"--data_path={sft_rows}", f"--output_dir={sft_dir}",
         f"--max_steps={config.sft_steps}", "--learning_rate=1e-3", "--val_set_size=0"])

    banner("2/4 reward model: a scoring head on the base model, trained on the pairs")
    run([python, "finetune.py", *common, "--stage=rm", f"--data_path={config.preferences}",
         f"--output_dir={rm_dir}", f"--max_steps={config.rm_steps}", "--learning_rate=1e-3", "--val_set_size=8"])
    rm_metrics = json.loads((rm_dir / "metrics.json").read_text())

    banner("3/4 DPO on top of the SFT adapter (reference: the SFT adapter, frozen)")
    run([python, "finetune.py", *common, "--stage=dpo", f"--data_path={config.preferences}",
         f"--lora_weights={sft_dir}", f"--output_dir={dpo_dir}", f"--max_steps={config.dpo_steps}",
         f"--beta={config.beta}", "--learning_rate=5e-4", "--val_set_size=8"])
    dpo_metrics = json.loads((dpo_dir / "metrics.json").read_text())

    banner("4/4 held-out questions: base, SFT and DPO answers, scored by the reward model")
    prompts = json.loads(Path(config.heldout_path).read_text())
    prompts_file = out / "heldout_prompts.json"
    atomic.write_text(prompts_file, json.dumps(prompts, indent=1) + "\n")
    target = out / "answers.json"  # one run, three models on one base: answers, scores and a report
    run([python, "generate.py", f"--base_model={config.base_model}", f"--lora_weights=base=,sft={sft_dir},dpo={dpo_dir}",
         "--prompt_type=human_bot", f"--eval_prompts_file={prompts_file}", f"--eval_output_file={target}",
         f"--score_model={rm_dir}", f"--max_new_tokens={config.max_new_tokens}", "--do_sample=False"])
    answers: dict[str, dict[str, dict]] = {}
    for row in json.loads(target.read_text()):
        answers.setdefault(row["model"], {})[row["prompt"]] = row
    for prompt in prompts:
        print(f"\n<human>: {prompt}")
        for label, rows in answers.items():
            print(f"  {label:<5} {rows[prompt]['score']:.3f}  {one_line(rows[prompt]['response'], 150)}")
    means = {label: sum(r["score"] for r in rows.values()) / len(rows) for label, rows in answers.items()}
    print(f"\nreward model: validation pairwise accuracy {rm_metrics.get('eval_accuracy', float('nan')):.2f}, "
          f"mean margin {rm_metrics.get('eval_margin', float('nan')):.2f}")
    print(f"DPO: validation reward accuracy {dpo_metrics.get('eval_accuracy', float('nan')):.2f}, "
          f"margin {dpo_metrics.get('eval_margin', float('nan')):.3f}")
    print("mean reward score on the held-out questions: "
          + ", ".join(f"{label} {value:.3f}" for label, value in means.items()))
    print(f"\nalign demo finished in {(time.monotonic() - started) / 60:.1f} min; outputs in {out}")


if __name__ == "__main__":
    flags.main(AlignDemoConfig, main, prog="python -m sftkit.demo_align",
               summary="SFT, reward model and DPO on the bundled preference set, with reward scores before/after.")
