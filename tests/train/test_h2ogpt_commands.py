"""h2oGPT's FINETUNE.md fine-tuning command, unchanged, on h2oGPT-shaped data and a tiny model.

The command is copied from h2oGPT's FINETUNE.md (seed commit 7bba4faf); only the values a test
machine cannot have change: the base model (a tiny local one), the data (a local copy shaped like
h2oai/h2ogpt-oig-oasst1-instruct-cleaned-v2), $NGPUS (2 CPU processes), plus a few steps and
h2oGPT's own multi-node batch flags (--micro_batch_size=1 --batch_size=7 --run_id=17 from its
finetune.py examples), so the global batch is not a multiple of micro batch x processes.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.train.test_distributed import free_port

REPO = Path(__file__).resolve().parents[2]
FINETUNE_MD = ("torchrun --nproc_per_node=$NGPUS finetune.py --base_model=h2oai/h2ogpt-oasst1-512-20b "
               "--data_path=h2oai/h2ogpt-oig-oasst1-instruct-cleaned-v2 --output_dir=h2ogpt_lora_weights")
# h2oGPT finetune.py's multi-node example flags (run 17), and --save_code from its other examples.
H2OGPT_EXTRA = "--micro_batch_size=1 --batch_size=7 --cutoff_len=512 --run_id=17 --save_code=True"

# Rows exactly as h2oGPT's finalized instruct data has them: markers in the text, a trailing
# "<human>:" end marker, prompt_type "plain" and a source column.
H2OGPT_ROWS = [
    {"input": "<human>: What is the capital of France?\n<bot>: The capital of France is Paris.\n<human>:",
     "prompt_type": "plain", "source": "unified_chip2"},
    {"input": "<human>: Who are you?\n<bot>: I am h2oGPT, a large language model.\n<human>:",
     "prompt_type": "plain", "source": "h2oai/openassistant_oasst1_h2ogpt"},
    {"input": "<human>: Add two and two.\n<bot>: Two and two make four.\n<human>: Thanks.\n<bot>: "
              "You are welcome.\n<human>:", "prompt_type": "plain", "source": "unified_chip2"},
]


def with_value(words: list[str], name: str, value: str) -> list[str]:
    """The command's own --name=… with a value this machine has (the flag itself stays)."""
    assert any(w.startswith(f"--{name}=") for w in words), name
    return [f"--{name}={value}" if w.startswith(f"--{name}=") else w for w in words]


@pytest.mark.slow
def test_finetune_md_command_runs_unchanged_under_torchrun(tiny_llama, tmp_path):
    data = tmp_path / "h2ogpt-oig-oasst1-instruct-cleaned-v2.json"
    data.write_text(json.dumps(H2OGPT_ROWS * 8))
    words = shlex.split(FINETUNE_MD.replace("$NGPUS", "2")) + shlex.split(H2OGPT_EXTRA)
    words = with_value(with_value(words, "base_model", tiny_llama), "data_path", str(data))
    assert words[0] == "torchrun" and words[2] == "finetune.py"
    command = [str(Path(sys.executable).with_name("torchrun")), words[1], f"--master_port={free_port()}",
               str(REPO / "finetune.py"), *words[3:], "--max_steps=2", "--report_to=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]

    out = tmp_path / "h2ogpt_lora_weights"
    # 7 // (1 x 2) = 3 accumulation steps: 6 sequences per step, said once, no error.
    assert re.search(r"\[17\] batch: --batch_size=7 is not a multiple of --micro_batch_size=1 x 2 processes; "
                     r"each step trains on 6 sequences \(3 accumulation steps\)", log), log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["run"]["gradient_accumulation"] == 3
    first, second = metrics["run"]["rank_adapter_checksums"]
    assert first == second
    assert (out / "adapter_model.safetensors").is_file() and (out / "code" / "finetune.py").is_file()
    settings = next(yaml.safe_load_all((out / "run_config.yaml").read_text()))
    assert settings["run_id"] == "17" and settings["effective_batch_size"] == 6 and settings["processes"] == 2
