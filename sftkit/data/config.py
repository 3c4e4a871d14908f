"""Settings of create_data.py: one dataclass, the single place every default lives.

Precedence (sftkit.flags): default < ``--config`` YAML < environment variable < flag.
"""
from __future__ import annotations

from dataclasses import dataclass

from sftkit.flags import flag

OIG_BASE_URL = "https://huggingface.co/datasets/laion/OIG/resolve/main/"

# OIG files with real instruction-following or dialogue content, after h2oGPT's choice: human-written
# or curated answers (chip2, safety/prosocial, HC3 human answers, SODA, unnatural instructions,
# grade-school math, UnifiedSKG, FLAN, NI, xP3 code), summaries and essays. Left out: the
# template-generated "sample dialog" files and the near-duplicate multi_sum set.
OIG_USEFUL_FILES = [
    "unified_chip2.jsonl",
    "unified_rallio_safety_and_prosocial.jsonl",
    "unified_unifiedskg_instructions.jsonl",
    "unified_grade_school_math_instructions.jsonl",
    "unified_hc3_human.jsonl",
    "unified_soda_dialog.jsonl",
    "unified_unnatural_instructions.jsonl",
    "unified_mathqa_flanv2_kojma_cot.jsonl",
    "unified_openai_summarize_tldr.jsonl",
    "unified_plot_screenplay_books_dialog.jsonl",
    "unified_essays.jsonl",
    "unified_cuad.jsonl",
    "unified_multi_news.jsonl",
    "unified_merged_code_xp3.jsonl",
    "unified_flan.jsonl.gz",
    "unified_ni.jsonl.gz",
]

DEFAULT_CENSOR_WORDS = [
    # Other assistants' names and makers: a row claiming to be them would teach the wrong identity.
    "chatgpt", "openai", "gpt-3", "gpt-4", "open assistant", "openassistant", "laion", "bard",
    # Template leftovers seen in scraped dialogue sets.
    "[insert", "lorem ipsum",
]

# ---- More input formats, OpenAssistant trees, identity, near-duplicates, personality (issue #10) ----
INPUT_FORMATS = ["auto", "oig", "oasst_trees", "oasst_messages", "sharegpt", "alpaca", "messages", "h2ogpt"]
# Other assistants' names as written in public chat data, misspellings included (matched case-insensitively,
# a space or hyphen between words optional): an answer calling itself one of these gets --bot_name. Besides
# OpenAssistant's and OpenAI's, the assistants of the public identity sets and of the models whose answers
# fill distilled SFT sets: FastChat's identity conversations (Vicuna), Qwen, DeepSeek, ChatGLM, StableLM.
# Names that are also common words (Koala, Alpaca, Dolly, Claude, Gemini, Falcon) are left out: a row
# mentioning one would be dropped; add them with --other_assistants for data that needs it.
DEFAULT_OTHER_ASSISTANTS = [
    "Open Assistant", "Open Assistent", "Open Asistant", "Open Assitant", "Open Assisstant", "Open Assistand",
    "Open Assitent", "Open Assistiant", "Open Assitiant", "Open Assiant", "ChatGPT", "Chat GPT", "GPT-3",
    "GPT-3.5", "GPT-4", "Vicuna", "h2oGPT", "Qwen", "Tongyi Qianwen", "DeepSeek", "DeepSeek-R1", "DeepSeek-V3",
    "ChatGLM", "StableLM",
]
# Their makers: "made by LAION" in a self-description becomes "made by --bot_maker". A long name with its
# short form in brackets ("Large Model Systems Organization (LMSYS)") is recognised when either is listed.
DEFAULT_OTHER_MAKERS = [
    "LAION-AI", "LAION AI", "LAION.ai", "LAION", "LMSYS", "LMSYS Org", "Large Model Systems Organization", "OpenAI",
    "Open AI", "Anthropic", "H2O.ai", "Databricks", "Stability AI", "Alibaba Cloud", "DeepSeek", "Zhipu AI",
]

DEFAULT_UNHELPFUL_PHRASES = [
    "as an ai language model",
    "as a language model",
    "as an ai, i",
    "i am an ai language model",
    "i'm just an ai",
    "i cannot provide an answer",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm not able to help with that",
    "i do not have personal opinions",
    "i don't have personal opinions",
]


@dataclass
class DataConfig:
    # Where and what
    work_dir: str = flag("./oig_work", "Directory for every stage's outputs and manifests", env="SFTKIT_WORK_DIR")
    source: str = flag(OIG_BASE_URL, "Base URL (http(s)://, file://) or local directory holding the input "
                       "files; offline, use the bundled sample: data/sample", env="SFTKIT_SOURCE")
    files: list[str] | None = flag(None, "Comma-separated input file names (.jsonl, .json, optionally .gz, or "
                                   ".parquet; any --input_format). Default: every such file when --source is a "
                                   "local directory, else the useful OIG files (sftkit.data.config.OIG_USEFUL_FILES)",
                                   env="SFTKIT_FILES")
    config: str | None = flag(None, "YAML recipe with any of these settings", env="SFTKIT_CONFIG")
    shard_index: int | None = flag(None, "Run only this shard (0-based), e.g. one per machine by hand; "
                                   "default: every shard, on --executor")
    num_shards: int = flag(1, "Split every stage's work into this many shards (files for download, "
                           "row-id hash partitions after it; finalize always runs once)")
    workers: int = flag(0, "Processes for the CPU-heavy filters and scorers; 0 = one per CPU core")
    batch_rows: int = flag(2048, "Rows per streamed Arrow record batch (bounds memory)")

    # Where the shards run (sftkit.data.run.runner; the stages' results do not depend on these)
    executor: str = flag("local", "Where shards run: local (this process, --workers processes per shard) or "
                         "ray (one Ray task per shard; pip install -r reqs_optional/requirements_optional_ray.txt)")
    ray_address: str | None = flag(None, "ray: cluster to join (auto, host:port or ray://host:port); default: "
                                   "RAY_ADDRESS, else a Ray instance started for this run on this machine")
    max_retries: int = flag(3, "ray: times a shard task is retried after its worker or node is lost")
    grade_actors: int = flag(1, "ray: reward-model actors for grade with --use_reward_model (model loaded once each)")
    num_gpus_per_worker: float = flag(0.0, "ray: GPUs per reward-model actor (0 = CPU actors)")
    allow_empty: bool = flag(False, "Let finalize write a dataset with 0 rows (otherwise an empty result fails)")
    debug: bool = flag(False, "Show the traceback of errors (otherwise one line saying what to do)")

    # download
    retries: int = flag(4, "download: attempts per file before giving up")
    retry_backoff_s: float = flag(1.0, "download: first wait between attempts, doubled each time")
    timeout_s: float = flag(60.0, "download: network timeout per request, seconds")
    checksums: dict = flag({}, "download: optional {file name: sha256} to verify downloads against")
    max_reject_fraction: float = flag(0.05, "download: fail a file when more than this fraction of its "
                                      "lines are malformed (they are listed in <file>.rejects.jsonl)")

    # detox
    target_row_chars: int = flag(1024, "detox: pack whole exchanges into rows of about this many characters")
    max_row_chars: int = flag(2048, "detox: hard cap on a row's characters; longer answers are cut at a "
                              "sentence boundary")
    profanity_threshold: float = flag(0.25, "detox: drop rows whose alt-profanity-check probability is >= this")
    detoxify: bool = flag(False, "detox: also score rows with detoxify (needs its weights: a local "
                          "--detoxify_checkpoint, or network access to download them)")
    detoxify_model_type: str = flag("original", "detox: detoxify model (original, unbiased, multilingual, ...)")
    detoxify_checkpoint: str | None = flag(None, "detox: local detoxify .ckpt file (config + state_dict)")
    detoxify_config_path: str | None = flag(None, "detox: local directory with the checkpoint's Hugging Face "
                                            "config and tokenizer files (offline loading)")
    detoxify_threshold: float = flag(0.5, "detox: drop rows where any detoxify head scores >= this")
    detoxify_batch_size: int = flag(32, "detox: rows per detoxify forward pass")
    device: str | None = flag(None, "detoxify and reward model device; default cuda when present, else cpu")

    # chop
    seed: int = flag(1234, "chop and finalize: seed of the random keep-draws and the shuffle")
    min_turn_mean_chars: int = flag(20, "chop: always drop rows whose mean human or bot turn is shorter")
    short_turn_keep: dict = flag({30: 0.2, 50: 0.5}, "chop: {mean turn chars: keep probability}: a row whose "
                                 "mean human or bot turn is below a key is kept with that probability")
    max_turn_chars: int = flag(2048, "chop: drop rows with a human or bot turn longer than this")

    # grade
    min_grade: float = flag(10.0, "grade: keep rows whose answers' Flesch-Kincaid grade is >= this")
    max_grade: float = flag(25.0, "grade: keep rows whose answers' Flesch-Kincaid grade is <= this")
    drop_profane: bool = flag(True, "grade: drop rows better_profanity flags")
    use_reward_model: bool = flag(False, "grade: score answers with --reward_model and keep >= "
                                  "--reward_threshold (needs its weights: local path or network)")
    reward_model: str = flag("OpenAssistant/reward-model-deberta-v3-large-v2",
                             "grade: Hugging Face sequence-classification reward model, hub id or local path")
    reward_threshold: float = flag(0.3, "grade: keep rows whose reward (sigmoid of the logit) is >= this")
    reward_batch_size: int = flag(8, "grade: reward model batch size (halved on out-of-memory)")
    reward_max_length: int = flag(512, "grade: reward model max tokens per question+answer")
    reward_progress_rows: int = flag(256, "grade: rows per resumable unit of reward scoring")
    local_files_only: bool = flag(False, "grade: never contact the hub for the reward model")
    trust_remote_code: bool = flag(False, "grade: allow the reward model's own code (only for models you trust)")

    # finalize
    censor_words: list[str] = flag(DEFAULT_CENSOR_WORDS, "finalize: drop rows containing any of these "
                                   "(case-insensitive)")
    unhelpful_phrases: list[str] = flag(DEFAULT_UNHELPFUL_PHRASES, "finalize: drop rows containing any of "
                                        "these refusal or boilerplate phrases (case-insensitive)")
    shuffle_bucket_rows: int = flag(100_000, "finalize: rows per bucket of the out-of-memory shuffle")

    # ---- More input formats, OpenAssistant trees, identity, near-duplicates, personality (issue #10) ----
    input_format: str = flag("auto", "download: format of the input files: auto (detected per file) or one of "
                             "oig, oasst_trees, oasst_messages, sharegpt, alpaca, messages, h2ogpt")
    oasst_paths: str = flag("all", "download: OpenAssistant trees give every root-to-leaf conversation (all) "
                            "or only the best-ranked reply at each step (best)")
    oasst_langs: list[str] = flag(["en"], "download: keep OpenAssistant messages in these languages (a "
                                  "message in another goes with its whole subtree); * keeps every language")
    bot_name: str = flag("Kestrel", "download and finalize: the assistant's name in rewritten "
                         "self-descriptions and personality rows")
    bot_maker: str = flag("sftkit", "download and finalize: who made the assistant, in rewritten "
                          "self-descriptions and personality rows")
    other_assistants: list[str] = flag(DEFAULT_OTHER_ASSISTANTS, "download: names an answer must not call "
                                       "itself (rewritten to --bot_name in a self-description, else row dropped)")
    other_makers: list[str] = flag(DEFAULT_OTHER_MAKERS, "download: makers an answer must not claim "
                                   "(rewritten to --bot_maker in a self-description, else row dropped)")
    near_dup_threshold: float = flag(0.8, "finalize: drop a row whose estimated word-shingle Jaccard "
                                     "similarity with a kept row (earlier in row-id order) is >= this (MinHash "
                                     "LSH, over all shards); 1 = off")
    near_dup_shingle_words: int = flag(5, "finalize: words per shingle for near-duplicate detection")
    near_dup_num_perm: int = flag(128, "finalize: MinHash permutations for near-duplicate detection")
    personality: bool = flag(True, "finalize: add generated rows in which the assistant gives its name and "
                             "maker (--bot_name, --bot_maker)")
    personality_repeat: int = flag(10, "finalize: how many times each personality row is repeated")


# Settings that say where and how a run executes, never what it produces (left out of data cards).
EXECUTION_SETTINGS = ("work_dir", "config", "shard_index", "num_shards", "workers", "batch_rows", "executor",
                      "ray_address", "max_retries", "grade_actors", "num_gpus_per_worker", "allow_empty",
                      "debug")
