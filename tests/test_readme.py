"""Every command in README.md's ```bash blocks runs here: short ones as written, long ones with tiny settings.

Commands run in README order, in a scratch directory holding links to the repository's scripts,
package, data and configs, so the relative paths they write (oig_work, lora_out, merged) stay out
of the repository and later commands find what earlier ones wrote. Tiny settings: the tiny random
model instead of any base model, two optimizer steps, the bundled sample instead of the OIG
download, tiny reward and detoxify models, the CPU, at most two processes. A server runs until it
answers HTTP, then stops. A README command that no rule here knows fails the test, so a new
command cannot go untested.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINKED = ["create_data.py", "finetune.py", "generate.py", "sftkit", "data", "configs", "bench", "pyproject.toml"]
PYTHON = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def readme_commands(text: str) -> list[str]:
    """Command lines of the README's bash blocks (comments and blank lines skipped, continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


COMMANDS = readme_commands(README.read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_flag(args: list[str], name: str, value) -> list[str]:
    """args with --name=value replacing any --name=… already there."""
    return [a for a in args if not a.startswith(f"--{name}=")] + [f"--{name}={value}"]


def has_flag(args: list[str], name: str) -> bool:
    return any(a.startswith(f"--{name}=") for a in args)


class Sandbox:
    """The scratch directory, environment and tiny models the README's commands run with."""

    def __init__(self, root: Path, tiny_model: str, reward_model: str, detoxify: tuple[Path, Path]):
        self.dir = root
        self.tiny_model, self.reward_model, self.detoxify = tiny_model, reward_model, detoxify
        for name in LINKED:
            (root / name).symlink_to(ROOT / name)
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")

    def run(self, argv: list[str], timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", self.env)
        result = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, timeout=timeout, **kwargs)
        assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_llama):
    from tests.data.tiny_scorers import build_detoxify_checkpoint, build_reward_model

    models = tmp_path_factory.mktemp("readme_models")
    return Sandbox(tmp_path_factory.mktemp("readme"), tiny_llama, str(build_reward_model(models / "reward")),
                   build_detoxify_checkpoint(models / "detoxify"))


# ------------------------------------------------------------------ rules, one per kind of command
def run_make(sb: Sandbox, args: list[str]) -> None:
    """`make X`: the target exists and its recipe expands (make -n); the demo itself runs with tiny settings."""
    (target,) = args
    subprocess.run(["make", "-n", target], cwd=ROOT, check=True, capture_output=True, timeout=60)
    if target == "demo":
        out = sb.run([PYTHON, "-m", "sftkit.demo", f"--base_model={sb.tiny_model}", "--max_steps=2",
                      "--max_new_tokens=4", f"--out_root={sb.dir / 'demo_out'}"])
        assert re.search(r"identity score on 5 held-out questions: base \d/5, fine-tuned \d/5", out.stdout)
        assert "generate.py" in out.stdout.split("4/4 chat with it")[1]
    if target == "demo-align":  # the whole code path: rlhf pipeline, DPO, batch evaluation, KL, the table
        out = sb.run([PYTHON, "-m", "sftkit.demo_align", f"--base_model={sb.tiny_model}", "--sft_steps=1",
                      "--rm_steps=1", "--rl_steps=1", "--dpo_steps=1", "--max_new_tokens=4",
                      f"--out_root={sb.dir / 'demo_out'}"])
        for model in ("base", "sft", "dpo", "grpo"):
            assert re.search(rf"^{model} +\d\.\d{{3}} \[[\d., ]+\] +\d\.\d\d \[[\d., ]+\] +\d+\.\d +\d+/45 +"
                             rf"-?\d+\.\d\d$", out.stdout, re.MULTILINE), out.stdout[-3000:]
        assert "KL to SFT" in out.stdout and "finetune.py rlhf" in out.stdout


def run_export(sb: Sandbox, args: list[str]) -> None:
    for assignment in args:
        name, _, value = assignment.partition("=")
        sb.env[name] = value


def run_pytest_stage(sb: Sandbox, args: list[str]) -> None:
    out = sb.run([PYTHON, "-m", "pytest", "-p", "no:cacheprovider", *args])
    assert "1 passed" in out.stdout


def run_create_data(sb: Sandbox, args: list[str]) -> None:
    if not has_flag(args, "source"):
        args = set_flag(args, "source", "data/sample")  # instead of downloading OIG
    if has_flag(args, "device"):
        args = set_flag(args, "device", "cpu")
    if has_flag(args, "use_reward_model") or has_flag(args, "config"):
        args = set_flag(args, "reward_model", sb.reward_model)
    if has_flag(args, "config"):
        checkpoint, config_dir = sb.detoxify
        args = set_flag(set_flag(args, "detoxify_checkpoint", checkpoint), "detoxify_config_path", config_dir)
        args = set_flag(args, "detoxify_threshold", "0.98")  # the tiny random model finds everything toxic
    out = sb.run([PYTHON, "create_data.py", *args])
    assert "rows in" in out.stdout + out.stderr


def tiny_model_args(sb: Sandbox, args: list[str]) -> list[str]:
    return set_flag([a for a in args if not re.match(r"--(bf16|fp16)=", a)], "base_model", sb.tiny_model)


def launcher(runner: str, launcher_args: list[str]) -> list[str]:
    if runner == "python":
        return [PYTHON]
    nproc = next((int(a.split("=")[1]) for a in launcher_args if a.startswith("--nproc_per_node=")), 1)
    return [TORCHRUN, f"--nproc_per_node={min(nproc, 2)}", f"--master_port={free_port()}"]


def run_finetune(sb: Sandbox, runner: list[str], args: list[str]) -> None:
    if args[:1] == ["rlhf"]:
        small = {"max_steps": 2, "cutoff_len": 128, "micro_batch_size": 4, "batch_size": 8, "report_to": "none"}
        args = set_flag(set_flag(tiny_model_args(sb, args[1:]), "train_flags", json.dumps(small)), "rl_flags",
                        json.dumps({"max_new_tokens": 8}))
        sb.run([*runner, "finetune.py", "rlhf", *args])
        output_dir = sb.dir / dict(a[2:].split("=", 1) for a in args)["output_dir"]
        rl = dict(a[2:].split("=", 1) for a in args).get("rl", "ppo")
        for step, weights in (("sft", "adapter_model"), ("rm", "model"), (rl, "adapter_model")):
            assert (output_dir / step / f"{weights}.safetensors").exists(), step
        return
    if args[:1] == ["export"]:
        sb.run([*runner, "finetune.py", "export", *tiny_model_args(sb, args[1:])])
        output_dir = sb.dir / dict(a[2:].split("=", 1) for a in args[1:])["output_dir"]
        assert (output_dir / "model.safetensors").exists()
        return
    args = set_flag(tiny_model_args(sb, args), "max_steps", 2)
    sb.run([*runner, "finetune.py", *args])
    output_dir = sb.dir / dict(a[2:].split("=", 1) for a in args)["output_dir"]
    whole_model = "--stage=rm" in args or "--lora_r=0" in args or "--finetune_method=full" in args
    assert (output_dir / ("model.safetensors" if whole_model else "adapter_model.safetensors")).exists()
    metrics = json.loads((output_dir / "metrics.json").read_text())
    if "--stage=ppo" in args or "--stage=grpo" in args:  # a policy loss may be negative; the rollouts are logged
        assert all("reward" in h and "kl" in h for h in metrics["history"])
    else:
        assert metrics["train_loss"] > 0


def run_generate(sb: Sandbox, runner: list[str], args: list[str]) -> None:
    args = set_flag(tiny_model_args(sb, args), "max_new_tokens", 8)
    if has_flag(args, "score_model"):
        args = set_flag(args, "score_model", sb.reward_model)
    if has_flag(args, "eval_prompts_file"):
        sb.run([*runner, "generate.py", *args])
        answers = json.loads((sb.dir / dict(a[2:].split("=", 1) for a in args)["eval_output_file"]).read_text())
        assert answers and all({"model", "prompt", "response", "new_tokens"} <= set(a) for a in answers)
    elif has_flag(args, "cli"):
        out = sb.run([*runner, "generate.py", *args], input="Hello there\n/quit\n")
        assert re.search(r"^>>> bot: \S", out.stdout, re.MULTILINE), out.stdout[-2000:]
    else:  # the browser UI: serve, answer HTTP, stop
        port = free_port()
        server = subprocess.Popen([*runner, "generate.py", *set_flag(args, "server_port", port)], cwd=sb.dir,
                                  env=sb.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                assert server.poll() is None, f"generate.py exited:\n{server.stdout.read()[-3000:]}"
                flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--"))
                path = "v1/models" if flags.get("api") == "True" else ""
                headers = {"Authorization": f"Bearer {flags['api_key']}"} if "api_key" in flags else {}
                try:
                    request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", headers=headers)
                    with urllib.request.urlopen(request, timeout=5) as response:
                        assert response.status == 200
                        break
                except OSError:
                    assert time.monotonic() < deadline, "the chat UI did not answer within 300 s"
                    time.sleep(1)
        finally:
            server.terminate()
            server.wait(timeout=60)


BENCH_TINY = {
    "bench_data.py": lambda sb: ["--rows=400", "--baseline_rows=40"],
    "bench_neardup.py": lambda sb: ["--rows=2000", "--baseline_rows=1000"],
    "bench_dedup.py": lambda sb: ["--rows=20000"],
    "bench_train.py": lambda sb: [f"--base_model={sb.tiny_model}", "--rows=8", "--cutoff_len=64", "--steps=1",
                                 f"--data_path={ROOT / 'data' / 'formats' / 'h2ogpt_sample.json'}"],
    "bench_generate.py": lambda sb: [f"--base_model={sb.tiny_model}", "--prompt_type=human_bot",
                                     "--max_new_tokens=8", "--repeats=1", "--max_overhead=100"],
    "bench_plan.py": lambda sb: ["--rows=2000", f"--base_model={sb.tiny_model}"],
    "bench_loss_memory.py": lambda sb: [f"--base_model={sb.tiny_model}", "--micro_batch_size=2", "--cutoff_len=64",
                                        "--method=lora", "--repeats=0"],
    "bench_tokenize.py": lambda sb: [f"--base_model={sb.tiny_model}", "--rows=200", "--repeats=1",
                                     "--cache_rows=40,160"],
    "bench_rl.py": lambda sb: [f"--base_model={sb.tiny_model}", "--steps=2", "--batch=8", "--micro=4",
                               "--max_new_tokens=8", "--cutoff_len=64"],
    "bench_api.py": lambda sb: [f"--base_model={sb.tiny_model}", "--prompt_type=human_bot", "--clients=1,2",
                                "--requests_per_client=1", "--max_tokens=4", f"--port={free_port()}"],
}


def run_bench(sb: Sandbox, script: str, args: list[str]) -> None:
    out = sb.run([PYTHON, script, *args, *BENCH_TINY[Path(script).name](sb)])
    assert "baseline" in out.stdout.lower()


def run_readme_command(sb: Sandbox, command: str) -> None:
    words = shlex.split(command, comments=True)
    head = words[0]
    if head == "make":
        return run_make(sb, words[1:])
    if head == "export":
        return run_export(sb, words[1:])
    if head == "bash" and words[1:2] == ["bench/gpu_check.sh"]:  # on a CPU: its --tiny self-test, two checks
        out = sb.run(["bash", "bench/gpu_check.sh", "--tiny", "--only=lora_bf16_pack,generate", "--steps=2"],
                     env={**sb.env, "PYTHON": PYTHON})
        assert "2/2 checks ok" in out.stdout
        return
    if head == "pytest" and words[1:2] == ["-s"] and words[2].startswith("create_data.py::"):
        return run_pytest_stage(sb, words[1:])
    if head in ("python", "torchrun"):
        at = next(i for i, w in enumerate(words) if not w.startswith("-") and i > 0)
        script, runner, args = words[at], launcher(head, words[1:at]), words[at + 1:]
        if script == "create_data.py" and head == "python":
            return run_create_data(sb, args)
        if script == "finetune.py":
            return run_finetune(sb, runner, args)
        if script == "generate.py":
            return run_generate(sb, runner, args)
        if script.startswith("bench/") and Path(script).name in BENCH_TINY:
            return run_bench(sb, script, args)
    pytest.fail(f"README.md command has no rule in tests/test_readme.py: {command}")


@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command_runs(command, sandbox):
    run_readme_command(sandbox, command)


def test_readme_has_the_commands_users_type():
    for expected in ("make demo", "make test", "pytest -s create_data.py::test_grade"):
        assert expected in COMMANDS
    assert any(c.startswith("torchrun finetune.py") for c in COMMANDS)
    assert any(c.startswith("python generate.py") for c in COMMANDS)


def test_readme_data_card_matches_a_fresh_run(tmp_path):
    subprocess.run([PYTHON, "create_data.py", "all", "--source=data/sample", f"--work_dir={tmp_path}"], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    card = (tmp_path / "oig_instruct_cleaned.card.md").read_text()
    table = re.search(r"^\| stage .*?\n(?=\n)", card, re.MULTILINE | re.DOTALL).group(0)
    block = re.search(r"<!-- BEGIN sample-card -->\n(.*?)<!-- END sample-card -->", README.read_text(), re.DOTALL)
    assert table in block.group(1), f"README's sample data card is stale; the fresh run gives:\n{table}"


# ------------------------------------------------------------------ file names the README promises
FILE_NAME = re.compile(r"`([\w./-]+\.(?:json|yaml|safetensors|py|md|txt))`")


def section(text: str, heading: str) -> str:
    """The README text under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading):]
    ends = [m.start() for m in re.finditer(r"^#{1,%d} " % len(level), rest, re.MULTILINE)]
    return rest[:ends[0]] if ends else rest


def test_readme_training_file_names_are_the_files_a_run_writes(tiny_llama, tmp_path):
    """Every file name the training parts of the README mention is a repository file or one a run writes."""
    from sftkit.train.loop import train
    from tests.train.helpers import tiny_config

    text = README.read_text()
    names = set()
    for heading in ("### 2. Fine-tuning: `finetune.py`", "### Training"):
        names |= set(FILE_NAME.findall(section(text, heading)))
    assert {"run_config.yaml", "trainer_state.json", "metrics.json"} <= names
    train(tiny_config(tiny_llama, tmp_path, max_steps=1, save_steps=1, save_code=True, report_to="tensorboard"))
    out = tmp_path / "out"
    written = {p.name for p in out.rglob("*")}
    tracked = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    tracked |= {Path(t).name for t in tracked}  # "`configs/deepspeed/zero1.json`, `zero2.json`"
    missing = sorted(n for n in names if n not in written and n not in tracked)
    assert not missing, f"README.md names files that neither the repository nor a training run has: {missing}"
