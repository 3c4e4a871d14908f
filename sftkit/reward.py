"""The reward scorer shared by the grade stage (``create_data.py grade --reward_model``), generation
(``generate.py --reward_model``) and reward-model training (``finetune.py --stage=rm`` saves models it loads).

A third-party reward model (e.g. OpenAssistant's DeBERTa) reads (question, answer) as a text pair. A
model trained by ``finetune.py --stage=rm`` records its prompt type in its config
(``sftkit_prompt_type``); the pair is then rendered with :mod:`sftkit.prompts` exactly as in training.
"""
from __future__ import annotations

from sftkit import models
from sftkit.errors import ScorerError
from sftkit.prompts import HUMAN, encode, render_conversation, split_turns

PROMPT_TYPE_KEY = "sftkit_prompt_type"


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


class RewardModelScorer:
    """Grades (question, answer) pairs with a Hugging Face sequence-classification reward model.

    A single-logit model's score is ``sigmoid(logit)``; a multi-label model's is the probability of
    its last label. Pairs are scored longest first in batches of similar length (less padding, and
    an out-of-memory error shows up on the first batch), halving the batch on out-of-memory.
    """

    def __init__(self, name_or_path: str, *, batch_size: int = 8, device: str | None = None,
                 max_length: int = 512, local_files_only: bool = False, trust_remote_code: bool = False):
        self.name_or_path = name_or_path
        self.batch_size = batch_size
        self.device = device or models.default_device()
        common = dict(local_files_only=local_files_only, trust_remote_code=trust_remote_code)
        try:
            self.tokenizer = models.load_tokenizer(name_or_path, padding_side=None, **common)
            self.model = models.load_model(name_or_path, device=self.device, scorer=True, **common)
        except Exception as exc:
            raise ScorerError(
                f"cannot load reward model {name_or_path!r}: {type(exc).__name__}: {exc}. Pass a local "
                "directory of a sequence-classification model (--reward_model=DIR), allow the download, or "
                "switch it off with --use_reward_model=false") from None
        self.max_length = min(max_length, self.tokenizer.model_max_length)  # never past the model's positions
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()
        # Set by finetune.py --stage=rm: render (question, answer) with the prompt type it was trained on.
        self.prompt_type = getattr(self.model.config, PROMPT_TYPE_KEY, None)

    def _encode(self, questions: list[str], answers: list[str]):
        kw = dict(truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        if self.prompt_type is None:
            return self.tokenizer(questions, answers, **kw)
        # The grade stage passes multi-turn questions as '<human>: …\n<bot>: …\n<human>: …' text.
        texts = [render_conversation((split_turns(q) if HUMAN in q else [("human", q)]) + [("bot", a)],
                                     self.prompt_type, self.tokenizer)[0] for q, a in zip(questions, answers)]
        return encode(self.tokenizer, texts, self.prompt_type, **kw)

    def _forward(self, questions: list[str], answers: list[str]) -> list[float]:
        import torch

        encoded = self._encode(questions, answers).to(self.device)
        with torch.inference_mode():
            logits = self.model(**encoded).logits.float()
        scores = torch.sigmoid(logits[:, 0]) if logits.shape[-1] == 1 else torch.softmax(logits, -1)[:, -1]
        return scores.cpu().tolist()

    def score(self, questions: list[str], answers: list[str]) -> list[float]:
        """One score in [0, 1] per pair, in the order given."""
        import torch

        if len(questions) != len(answers):
            raise ScorerError(f"{len(questions)} questions but {len(answers)} answers")
        order = sorted(range(len(questions)), key=lambda i: len(questions[i]) + len(answers[i]), reverse=True)
        scores = [0.0] * len(order)
        batch_size, done = self.batch_size, 0
        while done < len(order):
            index = order[done:done + batch_size]
            try:
                batch_scores = self._forward([questions[i] for i in index], [answers[i] for i in index])
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if batch_size == 1:
                    raise ScorerError(f"reward model {self.name_or_path!r} runs out of memory on a single "
                                      f"pair; lower --reward_max_length (now {self.max_length}) or use "
                                      "another --device") from None
                batch_size //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            for i, s in zip(index, batch_scores):
                scores[i] = s
            done += len(index)
        return scores
