"""Settings of finetune.py: one dataclass, the single place every default lives.

Flag names follow h2oGPT's finetune.py so commands written for it keep working.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from sftkit.flags import FlagError, flag
from sftkit.models import DEFAULT_BASE_MODEL
from sftkit.prompts import DEFAULT_PROMPT_TYPE, get_prompt_type, prompt_type_names
from sftkit.train.tracking import REPORTERS, parse_report_to

FINALIZED_DATA = "oig_work/oig_instruct_cleaned.json"
BUNDLED_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
BUNDLED_PREFERENCES = BUNDLED_SAMPLE.parent / "preference_sample.json"
VAL_METRICS = ("bleu", "sacrebleu", "rouge", "meteor")
LR_SCHEDULERS = ("cosine", "linear", "constant")
STAGES = ("sft", "rm", "dpo", "ppo", "grpo")
ONLINE_STAGES = ("ppo", "grpo")  # learn from their own answers, scored as they go (sftkit/train/recipes/online.py)
DPO_LOSSES = ("sigmoid", "ipo")
EXPORT_FORMATS = ("hf", "gguf", "ollama")
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass
class TrainConfig:
    base_model: str = flag(DEFAULT_BASE_MODEL, "Base model: a local directory, a hub id, or a built-in alias.")
    tokenizer_base_model: str = flag("", "Tokenizer to use (empty: the base model's).")
    data_path: str = flag("", "Training data: json/jsonl(.gz)/parquet file, a directory of them, or a hub "
                              f"dataset id (empty: {FINALIZED_DATA} if present, else the bundled data/sample; for "
                              "--stage=rm/dpo/ppo/grpo the bundled data/preference_sample.json). ppo/grpo read the prompt part of "
                              "each row: SFT rows, preference pairs or plain prompt lists.")
    data_col_dict: dict = flag({}, "Rename columns before reading rows, e.g. {'question': 'instruction', "
                                   "'answer': 'output'}.")
    prompt_type: str = flag("", "How rows are written, for every row (empty: each row's prompt_type column, else "
                                f"human_bot): {prompt_type_names()}; see README 'Prompt types'.")
    valid_path: str = flag("", "Validation data (same formats as data_path); empty: hold out val_set_size rows.")
    data_mix_in_path: str = flag("", "A second dataset to mix into the training data.")
    data_mix_in_factor: float = flag(0.0, "Rows of data_mix_in_path per training row (0.1 adds 10%; "
                                          "sampled with replacement when above its size).")
    data_mix_in_col_dict: dict = flag({}, "Column renames for data_mix_in_path.")
    data_mix_in_prompt_type: str = flag("", "Prompt type for data_mix_in_path (empty: prompt_type).")
    output_dir: str = flag("lora_out", "Where the adapter, tokenizer, config, metrics, logs and checkpoints go.")
    lora_weights: str = flag("", "Continue training from this LoRA adapter directory.")
    batch_size: int = flag(8, "Global batch size (sequences per optimizer step, over all processes); rounded "
                              "down to a multiple of micro_batch_size x processes, as h2oGPT does.")
    micro_batch_size: int = flag(4, "Sequences per forward pass on each process.")
    gradient_checkpointing: bool = flag(False, "Recompute activations in the backward pass to save memory.")
    fp16: bool = flag(False, "Train in float16.")
    bf16: bool = flag(False, "Train in bfloat16 (default on GPUs that support it). On the CPU: float32 weights "
                             "with bfloat16 autocast (fast on CPUs with AVX512-BF16/AMX).")
    train_8bit: bool = flag(False, "Load the base model in 8-bit (bitsandbytes) and train LoRA on top.")
    train_4bit: bool = flag(False, "Load the base model in 4-bit nf4 (QLoRA) and train LoRA on top.")
    num_epochs: float = flag(1.0, "Passes over the training data (fractions allowed).")
    max_steps: int = flag(-1, "Stop after this many optimizer steps (-1: run num_epochs).")
    learning_rate: float = flag(3e-4, "Peak learning rate.")
    lr_scheduler: str = flag("cosine", "Learning-rate schedule after warmup: cosine, linear or constant.")
    weight_decay: float = flag(0.0, "AdamW weight decay.")
    max_grad_norm: float = flag(1.0, "Clip gradients to this norm (0: no clipping).")
    val_set_size: float = flag(0.05, "Rows held out for validation when valid_path is empty (below 1: a fraction; "
                                     "0: no validation).")
    val_metrics: list[str] = flag([], "Metrics on generated answers at each evaluation: bleu, sacrebleu, rouge, "
                                      "meteor (comma-separated).")
    val_max_new_tokens: int = flag(64, "Longest generated answer when computing val_metrics.")
    eval_steps: int = flag(0, "Evaluate every this many steps (0: every eval_epochs epochs).")
    eval_epochs: float = flag(1.0, "Evaluate every this many epochs when eval_steps is 0; always at the end.")
    lora_r: int = flag(8, "LoRA rank (0: full fine-tuning, like --finetune_method=full).")
    lora_alpha: int = flag(16, "LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = flag(0.05, "Dropout on the LoRA path.")
    lora_target_modules: list[str] = flag([], "Layer names to adapt (empty: every linear layer inside the "
                                              "transformer blocks, detected per architecture).")
    train_on_inputs: bool = flag(False, "Also learn the prompt and human turns (default: only bot answers).")
    group_by_length: bool = flag(False, "Batch rows of similar length together to waste less padding.")
    pack: bool = flag(False, "Concatenate rows into full cutoff_len sequences, each row attending only to itself.")
    resume_from_checkpoint: str = flag("", "Resume from a checkpoint-N folder, or 'latest' for the newest one "
                                           "in output_dir.")
    cutoff_len: int = flag(512, "Longest sequence in tokens; longer rows are truncated (or dropped).")
    drop_truncations: bool = flag(False, "Drop rows longer than cutoff_len instead of truncating them.")
    tokenized_cache_dir: str = flag("", "Where the tokenized data is cached, one folder per data file and "
                                        "tokenizing settings, built once and memory-mapped by every run and rank "
                                        "(empty: ~/.cache/sftkit/tokenized, under $SFTKIT_CACHE when set).")
    tokenize_workers: int = flag(0, "Processes tokenizing a new cache (0: min(4, CPU cores)).")
    ddp: bool = flag(True, "Use DistributedDataParallel when launched with torchrun on several processes.")
    local_files_only: bool = flag(False, "Never reach a model hub; load only local files.")
    trust_remote_code: bool = flag(False, "Run model code shipped with a hub checkpoint (only if you trust it).")
    warmup_steps: int = flag(10, "Linear learning-rate warmup steps.")
    logging_steps: int = flag(1, "Log a summary line every this many steps.")
    save_steps: int = flag(200, "Save a checkpoint-N folder every this many steps (0: only at the end).")
    save_total_limit: int = flag(3, "Keep at most this many checkpoint-N folders (0: keep all).")
    add_eos_token: bool = flag(True, "End each row with the EOS token, so the model learns to stop.")
    seed: int = flag(42, "Seed for data order, the validation split, LoRA init and dropout.")
    report_to: str = flag("tensorboard", "Where to log besides stdout, comma-separated: tensorboard, mlflow "
                                         "(to MLFLOW_TRACKING_URI), wandb (WANDB_MODE=offline needs no login), "
                                         "or none.")
    deepspeed: str = flag("", "A DeepSpeed JSON config (e.g. configs/deepspeed/zero2.json); 'auto' values are "
                              "filled from these flags.")
    config: str = flag("", "A YAML recipe of these flags (e.g. configs/smollm2_lora.yaml); flags override it.")
    debug: bool = flag(False, "Show the traceback of errors (otherwise one line saying what to do).")
    # ---- objectives beyond SFT (sftkit/train/recipes/) and full fine-tuning
    stage: str = flag("sft", "What to train: sft (answers), rm (a reward model from preference pairs), dpo "
                             "(align to preference pairs), or online RLHF on the model's own answers to the prompts "
                             "of --data_path: ppo (with a critic) or grpo (group-normalised, no critic).")
    finetune_method: str = flag("lora", "lora (an adapter) or full (every weight; --lora_r=0 means the same).")
    beta: float = flag(0.1, "DPO only: strength of the pull towards the reference model.")
    dpo_loss: str = flag("sigmoid", "DPO only: sigmoid (the DPO paper) or ipo (squared, for noisy preferences).")
    # ---- online RLHF (--stage=ppo/grpo): rollouts, rewards, KL to the reference, the PPO/GRPO update
    reward_model: str = flag("", "ppo/grpo: reward model scoring each answer (a --stage=rm output_dir or a hub id; "
                                 "the scorer of sftkit/reward.py, score in [0, 1]).")
    reward_funcs: list[str] = flag([], "ppo/grpo: rule-based rewards, module:function or file.py:function "
                                       "(comma-separated); each gets prompts= and completions= (lists of text) "
                                       "and returns one float per completion.")
    reward_weights: list[float] = flag([], "ppo/grpo: weight of each reward: --reward_model first, then each "
                                           "--reward_funcs in order (empty: 1.0 each).")
    missing_stop_penalty: float = flag(0.0, "ppo/grpo: subtracted from the reward of an answer that did not stop "
                                            "by itself (EOS or a stop string) within max_new_tokens.")
    rollouts_per_prompt: int = flag(4, "ppo/grpo: answers sampled per prompt in each rollout (GRPO's group size, "
                                       "at least 2 for grpo).")
    max_new_tokens: int = flag(64, "ppo/grpo: longest sampled answer, in tokens (prompt plus answer fit in "
                                   "cutoff_len; longer prompts are skipped and counted).")
    temperature: float = flag(1.0, "ppo/grpo: sampling temperature of the rollouts (log-probs are taken at the "
                                   "same temperature, as TRL does).")
    top_p: float = flag(1.0, "ppo/grpo: nucleus sampling of the rollouts (1.0: the whole distribution).")
    kl_coef: float = flag(0.05, "ppo/grpo: weight of the per-token KL penalty to the reference model (ppo: in "
                                "the reward; grpo: the k3 estimator in the loss). With --target_kl, its start value.")
    target_kl: float = flag(0.0, "ppo/grpo: adapt kl_coef after each rollout towards this KL per answer "
                                 "(Ziegler et al. 2019; 0: kl_coef stays fixed).")
    kl_horizon: int = flag(10000, "ppo/grpo: answers over which the adaptive kl_coef moves by its full step "
                                  "(the horizon of the adaptive KL controller).")
    ppo_epochs: int = flag(1, "ppo/grpo: passes over each rollout batch; one optimizer step per mini-batch, so "
                              "new rollouts come every ppo_epochs x num_mini_batches steps.")
    num_mini_batches: int = flag(1, "ppo/grpo: optimizer steps per pass over a rollout batch (a rollout batch "
                                    "holds batch_size x num_mini_batches answers).")
    cliprange: float = flag(0.2, "ppo/grpo: clip of the policy ratio (PPO's epsilon).")
    cliprange_value: float = flag(0.2, "ppo only: clip of the value change from the rollout's values.")
    vf_coef: float = flag(0.1, "ppo only: weight of the value loss (the critic is a value head on the actor).")
    gamma: float = flag(1.0, "ppo only: discount of GAE.")
    lam: float = flag(0.95, "ppo only: lambda of GAE.")

    # ------------------------------------------------------------ h2oGPT command compatibility, run record
    run_id: str = flag("", "A name for this run, shown in the log lines and saved in run_config.yaml.")
    save_code: bool = flag(False, "Copy the code that ran (finetune.py and the sftkit package) into "
                                  "output_dir/code/, next to the adapter it trained.")
    llama_flash_attn: bool = flag(False, "Use flash attention (attn_implementation=flash_attention_2, needs the "
                                         "flash-attn package and a GPU); default: the model's own choice (sdpa).")
    use_auth_token: str = flag("", "Hub access token for gated or private models (True: the token saved by "
                                   "'hf auth login' or $HF_TOKEN; empty: none). Never written to run_config.yaml.",
                               env="HUGGINGFACE_API_TOKEN")
    resume_download: bool = flag(True, "Accepted for h2oGPT commands: hub downloads always resume an "
                                       "interrupted file.")

    # h2oGPT finetune.py flags with no meaning here: rejected by name with the reason (sftkit/flags.py).
    __unsupported_flags__ = {
        "llama_type": "the architecture and tokenizer class are read from the model's config.json; "
                      "drop the flag",
    }

    @property
    def fixed_prompt_type(self) -> str:
        """The prompt type of rows that carry none of their own (preference pairs): the flag, else human_bot."""
        return self.prompt_type or DEFAULT_PROMPT_TYPE

    @property
    def full_finetune(self) -> bool:
        return self.finetune_method == "full" or self.lora_r == 0

    def _stage_checks(self) -> list[tuple[bool, str]]:
        """Flags that mean something for one stage only are refused for the others, never ignored."""
        defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(self)}
        changed = lambda name: getattr(self, name) != defaults[name]  # noqa: E731
        checks = [
            (self.stage in STAGES, f"--stage must be one of {', '.join(STAGES)}"),
            (self.finetune_method in ("lora", "full"), "--finetune_method must be lora or full"),
            (self.dpo_loss in DPO_LOSSES, f"--dpo_loss must be one of {', '.join(DPO_LOSSES)}"),
            (self.beta > 0, "--beta must be above 0"),
            (not (self.full_finetune and (self.train_8bit or self.train_4bit)),
             "full fine-tuning trains every weight, which cannot be 8/4-bit; drop --train_8bit/--train_4bit "
             "or train LoRA (--lora_r above 0)"),
            (not (self.full_finetune and self.lora_weights),
             "--lora_weights with full fine-tuning: merge the adapter first (finetune.py export) and pass the "
             "merged model as --base_model"),
        ]
        for name in ("beta", "dpo_loss"):
            checks.append((self.stage == "dpo" or not changed(name), f"--{name} only applies to --stage=dpo"))
        checks += self._online_checks(changed)
        if self.stage in ("rm", "dpo"):
            for name, why in (("pack", "a preference pair's two answers are scored as separate rows"),
                              ("val_metrics", "they score generated answers against SFT references"),
                              ("data_mix_in_path", "mixing in is for SFT rows"),
                              ("train_on_inputs", "only answers are compared")):
                checks.append((not changed(name), f"--{name} does not apply to --stage={self.stage}: {why}"))
        if self.stage == "rm":
            checks.append((not self.lora_weights, "--lora_weights does not apply to --stage=rm: a reward model "
                                                  "starts from --base_model (merge an SFT adapter first)"))
        return checks

    def _online_checks(self, changed) -> list[tuple[bool, str]]:
        """Flags of --stage=ppo/grpo: refused elsewhere, checked there; offline-only flags refused there."""
        online = self.stage in ONLINE_STAGES
        checks = [(online or not changed(name), f"--{name} only applies to --stage=ppo or --stage=grpo")
                  for name in ("reward_model", "reward_funcs", "reward_weights", "missing_stop_penalty",
                               "rollouts_per_prompt", "max_new_tokens", "temperature", "top_p", "kl_coef",
                               "target_kl", "kl_horizon", "ppo_epochs", "num_mini_batches", "cliprange")]
        checks += [(self.stage == "ppo" or not changed(name), f"--{name} only applies to --stage=ppo")
                   for name in ("cliprange_value", "vf_coef", "gamma", "lam")]
        if not online:
            return checks
        sources = int(bool(self.reward_model)) + len(self.reward_funcs)
        checks += [
            (sources > 0, f"--stage={self.stage} needs a reward: --reward_model (a --stage=rm output_dir) and/or "
                          f"--reward_funcs=module:function"),
            (not self.reward_weights or len(self.reward_weights) == sources,
             f"--reward_weights: {len(self.reward_weights)} weights for {sources} rewards (--reward_model first, "
             f"then each --reward_funcs)"),
            (self.rollouts_per_prompt >= (2 if self.stage == "grpo" else 1),
             "--rollouts_per_prompt must be at least 2 for grpo (advantages compare answers to the same prompt)"
             if self.stage == "grpo" else "--rollouts_per_prompt must be at least 1"),
            (1 <= self.max_new_tokens < self.cutoff_len, "--max_new_tokens must be at least 1 and below --cutoff_len "
                                                         "(prompt and answer fit in cutoff_len)"),
            (self.temperature > 0, "--temperature must be above 0 (rollouts are sampled)"),
            (0 < self.top_p <= 1, "--top_p must be in (0, 1]"),
            (self.kl_coef >= 0 and self.target_kl >= 0, "--kl_coef and --target_kl must not be negative"),
            (self.kl_horizon >= 1 and self.ppo_epochs >= 1 and self.num_mini_batches >= 1,
             "--kl_horizon, --ppo_epochs and --num_mini_batches must be at least 1"),
            (self.cliprange > 0 and self.cliprange_value > 0, "--cliprange and --cliprange_value must be above 0"),
            (0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "--gamma and --lam must be between 0 and 1"),
            (not self.full_finetune, f"--stage={self.stage} trains a LoRA adapter (its reference is the model with "
                                     f"the adapter switched off, or the frozen --lora_weights); set --lora_r above 0 "
                                     f"and --finetune_method=lora"),
            (not changed("val_set_size") or self.val_set_size == 0,
             f"--val_set_size does not apply to --stage={self.stage}: nothing is held out, every rollout is scored "
             f"as it is made"),
        ]
        for name, why in (("valid_path", "nothing is held out, every rollout is scored as it is made"),
                          ("pack", "answers are sampled one per row"),
                          ("group_by_length", "rollouts are batched as they are sampled"),
                          ("drop_truncations", "prompts longer than cutoff_len - max_new_tokens are always skipped"),
                          ("val_metrics", "they score generated answers against SFT references"),
                          ("data_mix_in_path", "mixing in is for SFT rows"),
                          ("train_on_inputs", "only the sampled answers are learned")):
            checks.append((not changed(name), f"--{name} does not apply to --stage={self.stage}: {why}"))
        return checks

    def __post_init__(self):
        self.val_metrics = [m.strip().lower() for m in self.val_metrics if m.strip()]
        self.report_to = self.report_to.strip().lower()
        checks = [
            (self.batch_size >= 1, "--batch_size must be at least 1"),
            (self.micro_batch_size >= 1, "--micro_batch_size must be at least 1"),
            (self.cutoff_len >= 2, "--cutoff_len must be at least 2 tokens"),
            (self.num_epochs > 0 or self.max_steps > 0, "set --num_epochs above 0 or --max_steps"),
            (self.val_set_size >= 0 and (self.val_set_size < 1 or float(self.val_set_size).is_integer()),
             "--val_set_size is a fraction below 1 or a whole number of rows"),
            (self.lora_r >= 0, "--lora_r must be 0 (full fine-tuning) or more"),
            (self.data_mix_in_factor >= 0, "--data_mix_in_factor must not be negative"),
            (not (self.train_8bit and self.train_4bit), "--train_8bit and --train_4bit are exclusive"),
            (not (self.fp16 and self.bf16), "--fp16 and --bf16 are exclusive"),
            (self.lr_scheduler in LR_SCHEDULERS, f"--lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}"),
            (all(n in REPORTERS for n in parse_report_to(self.report_to)),
             f"--report_to: choose from {', '.join(REPORTERS)} (comma-separated), or none"),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0, "--learning_rate must be above 0"),
        ]
        checks += self._stage_checks()
        unknown = [m for m in self.val_metrics if m not in VAL_METRICS]
        checks.append((not unknown, f"--val_metrics: unknown {unknown}; choose from {', '.join(VAL_METRICS)}"))
        for ok, message in checks:
            if not ok:
                raise FlagError(message)

    def resolved_data_path(self) -> str:
        """The training data to read: the flag, else finalized OIG data, else the bundled sample.

        The sample ships with the repository, not the installed package: without a clone, say what to give.
        """
        if self.data_path:
            return self.data_path
        if self.stage != "sft":
            return str(BUNDLED_PREFERENCES)
        if Path(FINALIZED_DATA).is_file():
            return FINALIZED_DATA
        if not BUNDLED_SAMPLE.is_dir():
            raise FlagError(f"give --data_path (no {FINALIZED_DATA} here, and the bundled sample data/sample "
                            f"comes with the repository, not the installed package)")
        return str(BUNDLED_SAMPLE)

    def gradient_accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each process, computed as h2oGPT does (integer division).

        A batch_size that is not a multiple of micro_batch_size x processes is rounded down (at
        least one micro-batch): see :meth:`effective_batch_size`.
        """
        return max(1, self.batch_size // (self.micro_batch_size * world_size))

    def effective_batch_size(self, world_size: int) -> int:
        """Sequences per optimizer step over all processes, as actually trained."""
        return self.gradient_accumulation(world_size) * self.micro_batch_size * world_size

    def hub_options(self) -> dict:
        """Extra from_pretrained arguments: hub token and attention implementation (only when asked)."""
        token = self.use_auth_token.strip()
        options = {"attn_implementation": "flash_attention_2"} if self.llama_flash_attn else {}
        if token.lower() in ("true", "1"):
            options["token"] = True
        elif token and token.lower() not in ("false", "0", "none"):
            options["token"] = token
        return options


@dataclass
class ExportConfig:
    """Settings of ``finetune.py export``: merge a LoRA adapter into its base model."""

    base_model: str = flag(DEFAULT_BASE_MODEL, "Base model the adapter was trained on (directory, hub id or alias).")
    lora_weights: str = flag("lora_out", "The adapter directory (finetune.py's output_dir or a checkpoint-N); a full "
                                         "fine-tuning output_dir is re-saved as it is.")
    output_dir: str = flag("merged", "Where to write the standalone merged model (must not exist).")
    dtype: str = flag("float32", "Dtype of the saved weights: float32, bfloat16 or float16.")
    format: list[str] = flag(["hf"], "What to write, comma-separated: hf (safetensors + tokenizer with the chat "
                                     "template), gguf (llama.cpp), ollama (GGUF + Modelfile in output_dir/ollama).")
    gguf_type: str = flag("f16", "Weights of the GGUF: f32, f16, bf16 or q8_0 (norms stay f32).")
    prompt_type: str = flag("", "Prompt format the chat template renders (empty: the one the training output "
                                f"recorded in sftkit_prompt.json, else {DEFAULT_PROMPT_TYPE}).")
    system_prompt: str = flag("", "Default system prompt for the Modelfile's SYSTEM and the model card.")
    eval_report: str = flag("", "generate.py's evaluation report (its ANSWERS_report/ folder) to put in the model card.")
    local_files_only: bool = flag(False, "Never reach a model hub; load only local files.")
    trust_remote_code: bool = flag(False, "Run model code shipped with a hub checkpoint (only if you trust it).")

    def __post_init__(self):
        self.format = list(dict.fromkeys(f.strip().lower() for f in self.format if f.strip()))
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise FlagError("--dtype must be float32, bfloat16 or float16")
        unknown = [f for f in self.format if f not in EXPORT_FORMATS]
        if unknown or not self.format:
            raise FlagError(f"--format: {unknown or 'nothing'}; choose from {', '.join(EXPORT_FORMATS)}")
        if self.gguf_type not in GGUF_TYPES:
            raise FlagError(f"--gguf_type must be one of {', '.join(GGUF_TYPES)}")
        if self.prompt_type:
            get_prompt_type(self.prompt_type)


@dataclass
class RLHFConfig:
    """Settings of ``finetune.py rlhf``: SFT, then a reward model, then PPO or GRPO, in one output folder."""

    base_model: str = flag(DEFAULT_BASE_MODEL, "Base model of all three steps (directory, hub id or alias).")
    sft_data: str = flag("", "Step 1, SFT: training rows in any format finetune.py reads (empty: finetune.py's "
                             "default data).")
    preference_data: str = flag("", "Step 2, reward model: preference pairs (empty: the bundled "
                                    "data/preference_sample.json).")
    prompts: str = flag("", "Step 3, RL: prompts (any SFT or preference file, or a prompt list; empty: the prompts "
                            "of preference_data).")
    rl: str = flag("ppo", "Step 3: ppo (with a critic) or grpo (no critic, group-normalised advantages).")
    output_dir: str = flag("rlhf_out", "Where sft/, rm/ and ppo/ (or grpo/) go, with run_config.yaml recording "
                                       "every run of the pipeline.")
    prompt_type: str = flag("", "Prompt type of all three steps (empty: finetune.py's default, human_bot).")
    train_flags: dict = flag({}, "finetune.py flags for every step, e.g. {cutoff_len: 256, micro_batch_size: 4}.")
    sft_flags: dict = flag({}, "finetune.py flags for the SFT step only, e.g. {max_steps: 100, learning_rate: 1e-3}.")
    rm_flags: dict = flag({}, "finetune.py flags for the reward-model step only.")
    rl_flags: dict = flag({}, "finetune.py flags for the RL step only, e.g. {kl_coef: 0.1, rollouts_per_prompt: 8, "
                              "reward_funcs: 'my_rewards:f'}.")
    nproc: int = flag(1, "Processes per step (more than 1: each step runs under torchrun).")
    config: str = flag("", "A YAML recipe of these flags (the *_flags as nested mappings); flags override it.")
    debug: bool = flag(False, "Show the traceback of errors (otherwise one line saying what to do).")

    def __post_init__(self):
        if self.rl not in ONLINE_STAGES:
            raise FlagError(f"--rl must be one of {', '.join(ONLINE_STAGES)}")
        if self.nproc < 1:
            raise FlagError("--nproc must be at least 1")
        for name in ("train_flags", "sft_flags", "rm_flags", "rl_flags"):
            fixed = {"stage", "output_dir", "resume_from_checkpoint", "config"} & set(getattr(self, name))
            if fixed:
                raise FlagError(f"--{name}: {', '.join(sorted(fixed))} are set by the pipeline itself")
