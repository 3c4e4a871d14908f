"""Tiny randomly initialised scorer models, saved the way users' real ones are (no hub access).

* a BERT toxicity classifier in detoxify's checkpoint format (``{"config", "state_dict"}`` .ckpt)
  plus the Hugging Face config and tokenizer directory detoxify loads offline;
* a BERT sequence-classification reward model directory (one logit), like a reward model on the hub.
"""
from __future__ import annotations

from pathlib import Path

DETOXIFY_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
WORDS = ("the a is of and to in you i it that what who are how why can do explain this question answer "
         "science history energy water plant model data damn idiot stupid hello thanks").split()


def build_tokenizer(out_dir: Path):
    """A WordPiece vocabulary written locally, loaded as BertTokenizer (model_max_length 128)."""
    from transformers import BertTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:<>")
             + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + WORDS))
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(out_dir / "vocab.txt"), model_max_length=128)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def _tiny_bert(num_labels: int, vocab_size: int, seed: int):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
                        initializer_range=0.5)  # large random weights: scores vary from text to text
    return BertForSequenceClassification(config).eval()


def build_detoxify_checkpoint(out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """(checkpoint file, config directory) of a tiny detoxify-format toxicity model."""
    import torch

    config_dir = out_dir / "hf"
    tokenizer = build_tokenizer(config_dir)
    model = _tiny_bert(len(DETOXIFY_CLASSES), len(tokenizer), seed)
    model.config.save_pretrained(config_dir)
    checkpoint = out_dir / "tiny_detoxify.ckpt"
    torch.save({"config": {"arch": {"args": {"model_type": str(config_dir),
                                             "model_name": "BertForSequenceClassification",
                                             "tokenizer_name": "BertTokenizer",
                                             "num_classes": len(DETOXIFY_CLASSES)}},
                           "dataset": {"args": {"classes": DETOXIFY_CLASSES}}},
                "state_dict": model.state_dict()}, checkpoint)
    return checkpoint, config_dir


def build_reward_model(out_dir: Path, seed: int = 1) -> Path:
    """Directory of a tiny one-logit sequence-classification model with its tokenizer (safetensors)."""
    tokenizer = build_tokenizer(out_dir)
    model = _tiny_bert(1, len(tokenizer), seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
