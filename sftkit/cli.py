"""The three command lines, shared by the top-level scripts and the installed console scripts.

``create_data.py`` / ``sftkit-data``, ``finetune.py`` / ``sftkit-finetune`` and ``generate.py`` /
``sftkit-generate`` run the same functions below, so a clone and a ``pip install`` behave alike.
Heavy libraries (torch, transformers) load only once a run starts: ``--help`` answers at once.
Each returns None: a console script passes the return value to ``sys.exit``, and anything else
would end a successful run with exit status 1.
"""
from __future__ import annotations

import os
import sys

from sftkit import flags
from sftkit.errors import GenerationError
from sftkit.models import resolve_base_model

DATA_SUMMARY = "Raw conversation files to a clean instruct dataset, in five resumable stages."
FINETUNE_SUMMARY = "LoRA / 8-bit / 4-bit / full fine-tuning, under torchrun or DeepSpeed."
GENERATE_SUMMARY = ("Chat with a base model plus LoRA adapters: browser UI (default), terminal (--cli=True), "
                    "OpenAI-compatible API (--api=True) or batch/eval report (--eval_prompts_file).")


def data_main(argv: list[str] | None = None, summary: str = DATA_SUMMARY) -> None:
    from sftkit.data.config import DataConfig
    from sftkit.data.pipeline import STAGES, run

    argv = sys.argv[1:] if argv is None else list(argv)
    stages = " | ".join([*STAGES, "all"])
    usage = f"usage: create_data.py {{{stages}}} [--flag=value ...]"
    if not argv or argv[0].startswith("-"):
        if any(a in ("-h", "--help") for a in argv):
            flags.main(DataConfig, None, argv=["--help"], prog=f"create_data.py {{{stages}}}", summary=summary)
            return
        raise SystemExit(f"{usage}\nname a stage first; --help lists every flag")
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES and stage != "all":
        raise SystemExit(f"{usage}\nunknown stage {stage!r}")
    flags.main(DataConfig, lambda cfg: run(stage, cfg), argv=rest, prog=f"create_data.py {stage}")


def finetune_main(argv: list[str] | None = None, summary: str = FINETUNE_SUMMARY) -> None:
    """``argv`` None: this process is the program (it ends with the run), so a training run that does
    not quantize leaves bitsandbytes unimported (:func:`skip_bitsandbytes`)."""
    from sftkit.train.config import ExportConfig, RLHFConfig, TrainConfig

    program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)

    def export(config):
        from sftkit.train.export import export_merged
        return export_merged(config)

    def train(config):
        if program and not (config.train_8bit or config.train_4bit):
            skip_bitsandbytes(config.base_model)
        from sftkit.train.loop import train
        return train(config)

    def rlhf(config):
        from sftkit.train.rlhf import run
        run(config)

    if argv[:1] == ["export"]:
        flags.main(ExportConfig, export, argv[1:], prog="finetune.py export",
                   summary="Merge a LoRA adapter into its base model; write it as hf, gguf and/or ollama, with a model card.")
    elif argv[:1] == ["rlhf"]:
        flags.main(RLHFConfig, rlhf, argv[1:], prog="finetune.py rlhf",
                   summary="SFT, then a reward model, then PPO or GRPO (DeepSpeed-Chat's three steps), each step "
                           "resumable and skipped once complete.")
    else:
        flags.main(TrainConfig, train, argv, prog="finetune.py", summary=summary)


def skip_bitsandbytes(base_model: str) -> bool:
    """Make ``import bitsandbytes`` fail in this process, unless it is imported already or
    ``base_model`` is a checkpoint saved quantized; whether it did.

    peft imports bitsandbytes whenever it is installed, and bitsandbytes compiles torch kernels as it
    loads: 1.0 s of every start (5.2 s to 4.1 s to a model with LoRA, measured). A ``None`` entry in
    ``sys.modules`` is Python's own way to refuse an import, and peft and transformers then see the
    library as not installed. For a process that runs one training that does not quantize, then ends.
    """
    if "bitsandbytes" in sys.modules:
        return False
    try:
        with open(os.path.join(resolve_base_model(base_model), "config.json"), encoding="utf-8") as fh:
            if "quantization_config" in fh.read():
                return False
    except OSError:  # a hub id, or no config: it may be quantized, so leave it importable
        return False
    sys.modules["bitsandbytes"] = None
    return True


def generate_main(argv: list[str] | None = None, summary: str = GENERATE_SUMMARY) -> None:
    from sftkit.generation.config import GenerateConfig

    flags.main(GenerateConfig, run_generate, argv, prog="generate.py", summary=summary)


def run_generate(config):
    """Pick generate.py's front end: batch/eval, the OpenAI-compatible API, the terminal, or the browser UI.

    Under ``torchrun --nproc_per_node=N`` rank 0 serves and the other ranks exit at once.
    """
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank != 0:
        print(f"generate.py: rank {rank} of {world} exits; rank 0 serves the model", file=sys.stderr)
        return None
    if config.eval_output_file and not config.eval_prompts_file:
        raise GenerationError("--eval_output_file needs --eval_prompts_file (the prompts to answer)")
    if config.api and config.cli:
        raise GenerationError("--api=True and --cli=True: choose one front end")
    if config.eval_prompts_file or not (config.gradio or config.api or config.cli):
        if not config.eval_prompts_file:
            raise GenerationError("--gradio=False runs batch/eval mode: give --eval_prompts_file and "
                                  "--eval_output_file (or --api=True / --cli=True for another front end)")
        from sftkit.generation.batch import run_batch

        return run_batch(config)
    from sftkit.generation.loading import load_models

    models = load_models(config)
    if config.api:
        from sftkit.generation.api import serve

        return serve(models, config)
    if config.cli:
        from sftkit.generation.terminal import chat_loop

        return chat_loop(models, config)
    from sftkit.generation.ui import serve

    return serve(models, config)
