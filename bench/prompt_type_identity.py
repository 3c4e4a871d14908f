"""h2oGPT's data and commands, unchanged: train on ``prompt_type: plain`` rows, chat with human_bot.

The personality rows are rewritten in h2oGPT's exact shape (``<human>: q\\n<bot>: a\\n<human>:``,
``prompt_type: plain``), the embedded model is LoRA-tuned on them with ``--prompt_type=plain`` and
with ``--prompt_type=human_bot``, and each adapter answers the held-out identity questions through
``generate.py --prompt_type=human_bot`` (as h2oGPT's FINETUNE.md does). Printed per variant: how
many answers name the identity, and how many stop before ``--max_new_tokens``.

``--baseline_repo`` adds the same plain run with the code of another checkout (for example the
commit before this change), labelled as the baseline.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sftkit import flags  # noqa: E402
from sftkit.demo import says_identity  # noqa: E402
from sftkit.flags import flag  # noqa: E402
from sftkit.models import DEFAULT_BASE_MODEL  # noqa: E402


@dataclass
class Settings:
    base_model: str = flag(DEFAULT_BASE_MODEL, "Model to fine-tune.")
    personality_path: str = flag("data/personality.json", "Identity conversations to train on.")
    heldout_path: str = flag("data/identity_heldout.json", "Held-out identity questions.")
    out_dir: str = flag("prompt_type_identity_out", "Where rows, adapters and answers go (a new timestamped folder).")
    num_epochs: float = flag(3.0, "Passes over the rows.")
    learning_rate: float = flag(2e-3, "LoRA learning rate.")
    max_new_tokens: int = flag(48, "Longest answer; an answer shorter than this stopped by itself.")
    repetition_penalty: float = flag(1.07, "generate.py's --repetition_penalty (its default; 1.0: none).")
    trained_with: list[str] = flag(["plain", "human_bot"], "--prompt_type values to train with (comma-separated).")
    baseline_repo: str = flag("", "Another checkout whose finetune.py/generate.py give a labelled baseline.")


def run(cmd: list[str], cwd: Path) -> float:
    print("$ " + shlex.join(cmd), flush=True)
    started = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    result = subprocess.run(cmd, cwd=cwd, env=env)
    if result.returncode:
        raise SystemExit(f"failed (exit {result.returncode}): {shlex.join(cmd)}")
    return time.monotonic() - started


def h2ogpt_rows(personality: list[dict]) -> list[dict]:
    """Rows as h2oGPT publishes them: the markers in the text, ending with the next <human>:."""
    return [{"input": row["input"].rstrip() + "\n<human>:", "prompt_type": "plain"} for row in personality]


def main(settings: Settings) -> None:
    out = (Path(settings.out_dir) / time.strftime("%Y%m%d-%H%M%S")).resolve()
    out.mkdir(parents=True)
    rows_path = out / "h2ogpt_rows.json"
    rows_path.write_text(json.dumps(h2ogpt_rows(json.loads(Path(settings.personality_path).read_text())), indent=1))
    heldout = json.loads(Path(settings.heldout_path).read_text())
    prompts = out / "heldout_prompts.json"
    prompts.write_text(json.dumps([item["prompt"] for item in heldout]))
    variants = [(name, ROOT, "this checkout") for name in settings.trained_with]
    if settings.baseline_repo:
        variants.insert(0, ("plain", Path(settings.baseline_repo).resolve(), f"baseline {settings.baseline_repo}"))
    results = []
    for trained_with, repo, label in variants:
        name = f"{trained_with}-{len(results)}"
        train_s = run([sys.executable, "finetune.py", f"--base_model={settings.base_model}",
                       f"--data_path={rows_path}", f"--prompt_type={trained_with}", f"--output_dir={out / name}",
                       f"--num_epochs={settings.num_epochs}", f"--learning_rate={settings.learning_rate}",
                       "--batch_size=8", "--micro_batch_size=4", "--cutoff_len=256", "--val_set_size=0",
                       "--save_steps=1000000", "--report_to=none", "--seed=0"], repo)
        answers_path = out / f"answers_{name}.json"
        run([sys.executable, "generate.py", f"--base_model={settings.base_model}", f"--lora_weights={out / name}",
             "--prompt_type=human_bot", f"--eval_prompts_file={prompts}", f"--eval_output_file={answers_path}",
             f"--max_new_tokens={settings.max_new_tokens}", f"--repetition_penalty={settings.repetition_penalty}",
             "--do_sample=False"], repo)
        answers = json.loads(answers_path.read_text())
        identity = sum(says_identity(a["response"], item["expect"]) for a, item in zip(answers, heldout))
        stopped = sum(a["new_tokens"] < settings.max_new_tokens for a in answers)
        results.append((label, trained_with, identity, stopped, len(answers), train_s))
        for a in answers:
            print(f"  [{a['new_tokens']:>3} tokens] {a['prompt']} -> {a['response']!r}")
    print(f"\n{len(json.loads(rows_path.read_text()))} rows shaped '<human>: q\\n<bot>: a\\n<human>:' "
          f"(prompt_type plain), {len(heldout)} held-out questions, chat with --prompt_type=human_bot:")
    print("| code | trained with | names the identity | stops before max_new_tokens | train s |")
    print("| --- | --- | --- | --- | --- |")
    for label, trained_with, identity, stopped, total, train_s in results:
        print(f"| {label} | --prompt_type={trained_with} | {identity}/{total} | {stopped}/{total} | {train_s:.0f} |")


if __name__ == "__main__":
    flags.main(Settings, main, prog="bench/prompt_type_identity.py",
               summary="Identity score and stopping of h2oGPT-shaped plain rows trained with plain vs human_bot.")
