"""Text scorers used by the detox and grade stages, each loading real models or word lists.

Each judges a row as :func:`plain_text` (the row without its turn markers):

* :func:`profanity_probs`: alt-profanity-check's linear model, batched;
* :func:`profane_flags`: better_profanity's word-list match;
* :class:`DetoxifyScorer`: detoxify's multi-head toxicity classifier;

The reward-model scorer of the grade stage lives in :mod:`sftkit.reward`, shared with generation
and reward-model training.

Models whose weights are missing fail with one :class:`ScorerError` saying how to provide them.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from sftkit.errors import ScorerError
from sftkit.models import default_device


def plain_text(row: str) -> str:
    """The row without turn markers, as the text classifiers see it."""
    return row.replace("<human>:", "").replace("<bot>:", "")


def profanity_probs(texts: list[str]) -> np.ndarray:
    """alt-profanity-check probability that each text is offensive (float32)."""
    from profanity_check import predict_prob

    if not texts:
        return np.empty(0, dtype=np.float32)
    return np.asarray(predict_prob(texts), dtype=np.float32)


_ASCII_WORD_CHARS = "a-z0-9@$*\"'"


class _WordsetRegex:
    """better_profanity's word set as one regex: the same matches as its list of VaryingStrings.

    better_profanity tests ``word in CENSOR_WORDSET`` by comparing against ~900 VaryingString objects
    one by one (about a second per paragraph). Each VaryingString is a per-character choice among
    substitutions (``a`` → ``a @ * 4``), which is exactly a regex, so one compiled alternation answers
    the same question at once.
    """

    def __init__(self, words: list[str], char_map: dict[str, tuple[str, ...]]):
        import re

        def options(ch: str) -> str:
            return "(?:" + "|".join(re.escape(c) for c in sorted(char_map.get(ch, (ch,)), key=len, reverse=True)) + ")"

        self._regex = re.compile("(?:" + "|".join("".join(options(ch) for ch in w) for w in words) + ")")
        # For prefilter(): word characters may be split by separators (marked \x00), as in "f u c k".
        word_char = re.compile(f"[{_ASCII_WORD_CHARS}]")
        spread = ["\x00?".join(options(ch) for ch in w if word_char.fullmatch(ch)) for w in words]
        self.prefilter_pattern = "(?:^|\x00)(?:" + "|".join(p for p in spread if p) + ")(?:\x00|$)"

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and self._regex.fullmatch(text) is not None


@lru_cache(maxsize=1)
def _better_profanity():
    from better_profanity import Profanity

    checker = Profanity()
    checker.CENSOR_WORDSET = _WordsetRegex([str(w) for w in checker.CENSOR_WORDSET], checker.CHARS_MAPPING)
    return checker


def profane_flags(texts: list[str]) -> np.ndarray:
    """better_profanity's verdict for each text: True when it contains a listed word (or a variant).

    better_profanity only matches whole words, or neighbouring words joined (to catch ``f u c k``).
    So every match it can find shows up in the lowercased text with each separator run marked
    ``\x00``, as a listed word whose characters may be split by marks, starting and ending at a
    mark. One vectorized RE2 search for that over the whole batch finds the few rows that may match;
    only those go through better_profanity itself, so the verdicts are its own.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    checker = _better_profanity()
    flags = np.zeros(len(texts), dtype=bool)
    if not texts:
        return flags
    marked = pc.replace_substring_regex(pc.utf8_lower(pa.array(texts, pa.string())),
                                        f"[^{_ASCII_WORD_CHARS}]+", "\x00")
    maybe = pc.match_substring_regex(marked, checker.CENSOR_WORDSET.prefilter_pattern)
    for i in np.flatnonzero(maybe.to_numpy(zero_copy_only=False)):
        flags[i] = checker.contains_profanity(texts[i])
    return flags


def _default_device(device: str | None) -> str:
    return device or default_device()


class DetoxifyScorer:
    """detoxify's heads (toxicity, severe_toxicity, obscene, threat, insult, identity_attack, …) per text.

    ``checkpoint`` is a local ``.ckpt`` (a dict of ``config`` and ``state_dict``); it is first opened with
    ``torch.load(weights_only=True)`` so a file holding arbitrary pickled objects is refused before
    detoxify unpickles it. ``config_path`` is the directory of the Hugging Face config and tokenizer
    files, for offline loading. Without a checkpoint detoxify downloads its weights.
    """

    def __init__(self, model_type: str = "original", checkpoint: str | None = None,
                 config_path: str | None = None, device: str | None = None, batch_size: int = 32):
        import torch

        self.device = _default_device(device)
        self.batch_size = batch_size
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise ScorerError(f"--detoxify_checkpoint={checkpoint}: no such file")
            try:
                torch.load(checkpoint, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise ScorerError(f"--detoxify_checkpoint={checkpoint} cannot be read as tensors and plain "
                                  f"data (torch.load weights_only=True: {exc}); re-save it as a dict of "
                                  "'config' and 'state_dict'") from None
        try:
            from detoxify import Detoxify

            self.model = Detoxify(model_type, checkpoint=checkpoint, huggingface_config_path=config_path,
                                  device=self.device)
        except Exception as exc:
            where = f"checkpoint {checkpoint}" if checkpoint else f"model_type {model_type!r} (downloaded)"
            raise ScorerError(
                f"cannot load detoxify from {where}: {type(exc).__name__}: {exc}. Give a local checkpoint "
                "with --detoxify_checkpoint=FILE.ckpt --detoxify_config_path=DIR (the Hugging Face config and "
                "tokenizer of its architecture), or switch it off with --detoxify=false") from None
        self.heads: list[str] = list(self.model.class_names)

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        """``{head: float32 scores}`` for ``texts``, in batches of ``batch_size``."""
        columns = {head: np.empty(len(texts), dtype=np.float32) for head in self.heads}
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            result = self.model.predict(chunk)
            for head in self.heads:
                columns[head][start:start + len(chunk)] = np.atleast_1d(np.asarray(result[head]))
        return columns
