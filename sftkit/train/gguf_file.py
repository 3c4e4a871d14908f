"""A merged model as one GGUF file (llama.cpp, Ollama, LM Studio), written with the ``gguf``
package's writer, tensor-name tables and key constants.

The llama family only (llama, mistral, qwen2; SmolLM2 is llama), with a byte-level BPE tokenizer;
anything else is refused by name, pointing to llama.cpp's own converter. As llama.cpp's
``convert_hf_to_gguf.py`` does, llama and mistral store the Q and K projections with the rotary
halves interleaved (:func:`interleave_rotary`); transformers' GGUF reader undoes exactly that.
Tokenizer and chat template go in the metadata; 1-D tensors (norms, biases) stay float32.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sftkit.errors import ExportError
from sftkit.train.config import GGUF_TYPES
# transformers model_type -> (gguf architecture name, whether Q/K are stored interleaved)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
LLAMA_CPP_CONVERTER = "llama.cpp's convert_hf_to_gguf.py (https://github.com/ggml-org/llama.cpp)"


def gguf_arch(model_type: str):
    """The gguf package's MODEL_ARCH for a transformers model_type, or ExportError naming it."""
    import gguf

    if model_type not in ARCHITECTURES:
        raise ExportError(f"--format=gguf writes the llama family ({', '.join(ARCHITECTURES)}); this model is "
                          f"{model_type!r}: convert the merged export (--format=hf) with {LLAMA_CPP_CONVERTER}")
    name = ARCHITECTURES[model_type][0]
    return next(arch for arch, arch_name in gguf.MODEL_ARCH_NAMES.items() if arch_name == name)


def interleave_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's rows from transformers' rotate-half layout to llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tensor_type(gguf_type: str, array: np.ndarray):
    """The GGML type a tensor is stored in: 1-D tensors and rows q8_0 cannot block stay float32/16."""
    import gguf

    T = gguf.GGMLQuantizationType
    if array.ndim < 2 or gguf_type == "f32":
        return T.F32
    if gguf_type == "q8_0":
        block = gguf.GGML_QUANT_SIZES[T.Q8_0][0]
        return T.Q8_0 if array.shape[-1] % block == 0 else T.F16
    return {"f16": T.F16, "bf16": T.BF16}[gguf_type]


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


# ---------------------------------------------------------------- tokenizer
def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for how a byte-level BPE tokenizer splits text before merging."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        # The names transformers' GGUF reader splits by; llama.cpp knows them by the same names.
        for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
            if split == pattern:
                return name
    raise ExportError(f"--format=gguf: the tokenizer splits text in a way sftkit cannot name for llama.cpp "
                      f"({kinds}); convert the merged export (--format=hf) with {LLAMA_CPP_CONVERTER}")


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict:
    """Tokens, token types, merges and pre-tokenizer name of a byte-level BPE tokenizer."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise ExportError(f"--format=gguf writes byte-level BPE tokenizers; this one is "
                          f"{spec['model']['type']}: convert the merged export with {LLAMA_CPP_CONVERTER}")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    if len(by_id) > vocab_size:
        raise ExportError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} embeddings")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows past the tokenizer (padding), as llama.cpp writes them
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre_tokenizer_name(spec.get("pre_tokenizer"))}


# ---------------------------------------------------------------- the file
def write_gguf(model, tokenizer, path: Path, gguf_type: str, *, name: str, chat_template: str | None,
               add_bos: bool, stop_token_ids: list[int]) -> dict:
    """Write ``model`` (a merged transformers causal LM) and its tokenizer to ``path``; a summary."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"--gguf_type must be one of {', '.join(GGUF_TYPES)}")
    config = model.config
    arch = gguf_arch(config.model_type)
    interleaved = ARCHITECTURES[config.model_type][1]
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"--format=gguf: rope scaling {rope.get('rope_type')!r} is not written by sftkit; "
                          f"convert the merged export with {LLAMA_CPP_CONVERTER}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)  # transformers' reader reads llama files named "mistral…" as mistral
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[gguf_type]))

    vocab = tokenizer_metadata(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id),
                          (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id),
                          (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    end_of_turn = [i for i in stop_token_ids if i != tokenizer.eos_token_id]
    if end_of_turn:  # llama.cpp ends generation at its end-of-turn token too
        writer.add_eot_token_id(end_of_turn[0])
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    counts: dict[str, int] = {}
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads a missing output.weight as tied to the embeddings
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ExportError(f"--format=gguf: no GGUF name for tensor {hf_name!r} of {config.model_type}; convert "
                              f"the merged export with {LLAMA_CPP_CONVERTER}")
        array = tensor.detach().float().cpu().numpy()
        if interleaved and suffix == "weight" and base.endswith("self_attn.q_proj"):
            array = interleave_rotary(array, heads)
        elif interleaved and suffix == "weight" and base.endswith("self_attn.k_proj"):
            array = interleave_rotary(array, kv_heads)
        qtype = tensor_type(gguf_type, array)
        data = gguf.quants.quantize(array, qtype)
        writer.add_tensor(f"{gguf_name}.{suffix}", data, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": path.name, "architecture": gguf.MODEL_ARCH_NAMES[arch], "tensors": counts,
            "pre_tokenizer": vocab["pre"], "bytes": path.stat().st_size}
