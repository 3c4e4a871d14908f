"""Settings of generate.py: one dataclass read by the engine and by every front end.

The settings are checked once, when a config is made (flags, a recipe, or ``replace`` with a UI's
or an API request's values), so the engine never re-checks them and a bad value is a
GenerationError naming the flag before anything loads.
"""
from __future__ import annotations

from dataclasses import dataclass

from sftkit.errors import GenerationError
from sftkit.flags import flag
from sftkit.models import DEFAULT_BASE_MODEL
from sftkit.prompts import get_prompt_type, prompt_type_names

SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)  # what torch.manual_seed takes, and OpenAI's int64 seed


@dataclass
class GenerateConfig:
    """Settings of generate.py: the model, how to sample, and which front end to run."""

    base_model: str = flag(DEFAULT_BASE_MODEL, "Base model: a hub id, a local directory, or a built-in alias.")
    lora_weights: str | None = flag(None, "LoRA adapter directory (finetune.py's output_dir; if it holds only "
                                          "checkpoint-* folders, the newest one), or several as name=path pairs "
                                          "(base=,tuned=lora_out: an empty path is the base model alone), all on "
                                          "one base model. None: the base model alone.")
    tokenizer_base_model: str | None = flag(None, "Load the tokenizer from here instead of base_model.")
    prompt_type: str = flag("human_bot", f"Prompt format, the same as training used: {prompt_type_names()}.")
    system_prompt: str = flag("", "Text put before the conversation (empty: none).")
    stop: list[str] = flag([], "Extra strings that end an answer (comma-separated), besides the end-of-sequence "
                               "token and the prompt type's own (<human>: and <bot>: for human_bot).")
    load_8bit: bool = flag(False, "Load the base model in 8-bit through bitsandbytes.")
    load_4bit: bool = flag(False, "Load the base model in 4-bit nf4 through bitsandbytes.")
    load_half: bool = flag(False, "Load the weights in 16 bits (bf16 where supported, else fp16) even on CPU.")
    local_files_only: bool = flag(False, "Never reach a model hub; load from local files and caches only.")
    trust_remote_code: bool = flag(False, "Run model code shipped with the checkpoint (only for models you trust).")
    device: str | None = flag(None, "Device such as cpu or cuda:0. None: this rank's GPU if there is one, else CPU.")
    gpu_id: int | None = flag(None, "GPU to use (cuda:<gpu_id>) when device is not set.")
    temperature: float = flag(0.7, "Sampling temperature (used when do_sample is True).")
    top_p: float = flag(0.9, "Nucleus sampling: keep the smallest token set with this much probability.")
    top_k: int = flag(50, "Sample only among the k most likely tokens (0: no limit).")
    num_beams: int = flag(1, "Beam search width; 1 is greedy or sampling. Beams > 1 answer without streaming.")
    early_stopping: bool = flag(False, "Beam search ends once num_beams finished candidates exist.")
    max_new_tokens: int = flag(256, "Most tokens generated per answer.")
    min_new_tokens: int = flag(0, "Fewest tokens generated per answer (end-of-sequence is held off until then).")
    max_time: float = flag(0.0, "Most seconds spent on one generate call (0: no limit).")
    num_return_sequences: int = flag(1, "Answers per prompt in batch mode (sampled, or the best beams).")
    repetition_penalty: float = flag(1.07, "Penalty > 1 discourages repeating tokens already in the text "
                                           "(never EOS or the stop strings' tokens).")
    do_sample: bool = flag(False, "Sample (True) or decode greedily / by beam search (False).")
    seed: int | None = flag(None, "Reseed before every answer so sampling is reproducible (0 is a seed like any "
                                  "other); None: fresh randomness.")
    max_context_tokens: int = flag(0, "Context length for prompt plus answer; 0: the model's own "
                                      "(max_position_embeddings). History is trimmed from the oldest turn to fit.")
    stream_output: bool = flag(True, "Show answers token by token in the UI and terminal (False: whole answers).")
    chat: bool = flag(True, "Keep the conversation history in the UI and terminal (False: every message alone).")
    cli: bool = flag(False, "Chat in the terminal instead of the browser UI.")
    gradio: bool = flag(True, "Serve the browser UI; False: batch/eval mode (needs --eval_prompts_file).")
    api: bool = flag(False, "Serve an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions, /v1/completions).")
    api_key: str | None = flag(None, "API mode: every request needs 'Authorization: Bearer <api_key>'.",
                               env="SFTKIT_API_KEY")
    api_queue_size: int = flag(64, "API mode: requests waiting beyond this many get 429 with Retry-After.")
    api_max_body_mb: float = flag(1.0, "API mode: request bodies larger than this many megabytes get 413, refused "
                                       "before they are read whole.")
    api_batch_size: int = flag(8, "API mode: requests arriving together are generated as one padded batch of up "
                                  "to this many answers (1: one at a time).")
    eval_prompts_file: str | None = flag(None, "Batch mode: a file of prompts in any input format (strings, rows "
                                               "with 'prompt', alpaca, ShareGPT, messages, …); a multi-turn row is "
                                               "its history and final question, written as training writes it; "
                                               "'prompt' rows with 'answers' (accepted short answers) are checked "
                                               "for correctness.")
    eval_output_file: str | None = flag(None, "Batch mode: where to write the JSON list of {model, prompt, response, "
                                              "seconds, new_tokens[, score][, correct]}; a report (Markdown + PNG "
                                              "plots) is written next to it.")
    eval_sample: int = flag(0, "Batch mode: answer a random sample of this many prompts (drawn with --seed, "
                               "None counting as 0); 0: all.")
    overwrite: bool = flag(False, "Batch mode: replace an existing eval_output_file.")
    batch_size: int = flag(1, "Batch mode: prompts generated together (left-padded).")
    score_model: str | None = flag(None, "Reward model (hub id or directory) that scores each answer, in batch "
                                         "mode and in the UI; the same scorer as create_data.py's grade stage.")
    server_name: str = flag("127.0.0.1", "Address the UI or API binds to (0.0.0.0 exposes it to your network).")
    server_port: int | None = flag(None, "Port of the UI or API. None: 7860 for the UI, 8000 for the API.")
    share: bool = flag(False, "Ask gradio for a public share link (off: the UI stays on this machine).")
    debug: bool = flag(False, "Show the traceback of errors.")
    config: str | None = flag(None, "YAML recipe with any of these flags.", env="SFTKIT_GENERATE_CONFIG")

    def __post_init__(self):
        get_prompt_type(self.prompt_type)  # a typo fails here, before anything loads
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1"),
            (0 <= self.min_new_tokens <= self.max_new_tokens, "min_new_tokens",
             f"must be between 0 and --max_new_tokens={self.max_new_tokens}"),
            (self.num_beams >= 1, "num_beams", "must be at least 1"),
            (self.num_return_sequences >= 1, "num_return_sequences", "must be at least 1"),
            (self.repetition_penalty > 0, "repetition_penalty", "must be above 0 (1.0: none)"),
            (self.top_k >= 0, "top_k", "must be 0 (no limit) or more"),
            (self.max_time >= 0, "max_time", "must be 0 (no limit) or more"),
            (self.max_context_tokens >= 0, "max_context_tokens", "must be 0 (the model's own) or more"),
            (self.seed is None or SEED_RANGE[0] <= self.seed <= SEED_RANGE[1], "seed",
             "must fit in 64 bits (-2**63 to 2**63-1)"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.api_batch_size >= 1, "api_batch_size", "must be at least 1"),
            (self.api_queue_size >= 1, "api_queue_size", "must be at least 1"),
            (self.api_max_body_mb > 0, "api_max_body_mb", "must be above 0"),
        ]
        if self.do_sample:
            checks += [(self.temperature > 0, "temperature",
                        "must be above 0 when sampling (or set --do_sample=False for greedy decoding)"),
                       (0 < self.top_p <= 1, "top_p", "must be in (0, 1]")]
        for ok, name, rule in checks:
            if not ok:
                raise GenerationError(f"--{name}={getattr(self, name)}: {rule}")

    def port(self) -> int:
        """The port to serve on: --server_port, else the front end's usual one."""
        if self.server_port:
            return self.server_port
        return 8000 if self.api else 7860
