"""Tiny randomly initialised causal LMs with a locally trained tokenizer, saved like a user's model.

They go through the same ``from_pretrained`` loading code as a real checkpoint, with no hub access.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "<human>: What is the capital of France?\n<bot>: The capital of France is Paris.",
    "<human>: Who are you?\n<bot>: I am a helpful assistant trained with sftkit.",
    "### Instruction:\nAdd two and two.\n\n### Response:\nTwo and two make four.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/\\|-_=+*&^%$#@~`",
    "Hello, how are you today? I am fine, thank you very much for asking.",
]


def build_tokenizer(out_dir: str | Path, vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on a few lines, with EOS/BOS/PAD and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: str | Path, arch: str = "llama", seed: int = 0,
                     max_position_embeddings: int = 512) -> Path:
    """Save a tiny ``arch`` ('llama' or 'gpt_neox') causal LM and its tokenizer to ``out_dir``."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(out_dir)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, **common))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(rotary_pct=0.25, use_parallel_residual=True, **common))
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir

# A chat template that renders tools the way Qwen2.5 / Hermes-style templates do: the tool list in the
# system turn, each call as <tool_call>{"name", "arguments"}</tool_call> in the assistant turn, the
# results of consecutive tool messages in one user turn as <tool_response> blocks.
TOOL_CHAT_TEMPLATE = (
    "{%- if tools -%}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n{% endif %}"
    "Functions you may call:\n<tools>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools><|im_end|>\n"
    "{%- elif messages[0]['role'] == 'system' -%}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}\n<|im_start|>user{% endif %}\n"
    "<tool_response>\n{{ message['content'] }}\n</tool_response>"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>{% endif -%}"
    "{%- elif message['role'] != 'system' -%}\n<|im_start|>{{ message['role'] }}\n{{ message['content'] or '' }}"
    "{%- if message.tool_calls is defined %}{% for call in message.tool_calls %}\n<tool_call>\n"
    "{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}}\n</tool_call>"
    "{%- endfor %}{% endif %}<|im_end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}\n<|im_start|>assistant\n{% endif -%}"
)
