"""Next-token cross entropy of a causal LM without its full-vocabulary float32 logits.

The plain way, ``model(...).logits`` then ``cross_entropy(logits.float())``, holds a
``[batch, seq, vocab]`` tensor three times over (the logits, their float32 copy or log-softmax,
and its gradient): with SmolLM2's 49k vocabulary the largest activations of a step. Here the model
body runs with ``logits_to_keep=1`` and ``output_hidden_states=True``, and the LM head is applied to
the final hidden states of the *learned* positions only, a chunk of tokens at a time, each chunk
under activation checkpointing: its float32 logits exist during its own forward and again during its
own backward, never all at once. When the head is not trained (LoRA elsewhere, the usual case) each
chunk's gradient with respect to its hidden states is worked out in the forward instead
(:class:`_FrozenHeadLosses`), so no logits are computed twice. A plain ``nn.Linear`` head (tied to
the embeddings or not) is applied as a matmul of its weight, gathered chunk by chunk under DeepSpeed
ZeRO-3 in the forward and again in any recomputation; any other head (LoRA on it, a quantized one), and a head that ZeRO-3
partitions and trains, is called as the module, whose ZeRO-3 hooks gather it; under ZeRO-3 a head
other than a plain Linear keeps whole logits. On CUDA with ``liger-kernel`` installed, a plain head
with its weight whole (not ZeRO-3) goes through Liger's fused linear cross entropy for the SFT loss.

Models whose logits are not just ``head(last hidden state)`` (Gemma's soft-capping, Cohere's logit
scale...) are found by a check at load time and keep the plain path.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from sftkit.train.tokenize import IGNORE

CHUNK_LOGITS = 2**24  # logits per chunk: 64 MiB of float32, whatever the vocabulary


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position next-token cross entropy from whole logits (0 where the label is ignored),
    shape (batch, seq-1): the plain computation, the reference the chunked one must equal."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE, reduction="none")
    return loss.view(shift_labels.shape)


def _gathered(*params):
    """Under DeepSpeed ZeRO-3, these parameters whole inside the block (read-only); else nothing to do."""
    partitioned = [p for p in params if p is not None and getattr(p, "ds_status", None) is not None
                   and p.ds_status.name != "AVAILABLE"]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(partitioned)


def _linear_chunk_losses(weight, bias, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Views, not the parameters, are what the matmul saves: ZeRO-3 frees a gathered parameter's
    # data on leaving the block, and a view keeps the gathered values for this chunk's backward.
    with _gathered(weight, bias):
        logits = F.linear(hidden, weight[:], None if bias is None else bias[:])
    return F.cross_entropy(logits.float(), targets, reduction="none")


class _FrozenHeadLosses(torch.autograd.Function):
    """Per-token cross entropy of ``linear(hidden, weight, bias)`` for a head that is not trained, a
    chunk of tokens at a time, each token's gradient with respect to its hidden state worked out in
    the forward (softmax minus the target, times the weight): the backward only scales them.
    Checkpointed chunks compute their logits twice, a third of the head's matmuls: without that, a
    LoRA step of the embedded model on the CPU trains 12% more tokens/s (measured). The same losses;
    the same gradients up to rounding (scaled after the matmul instead of before)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, step: int):
        losses, grads = [], []
        with _gathered(weight, bias):
            weight, bias = weight[:], None if bias is None else bias[:]
            for start in range(0, len(targets), step):
                chunk = targets[start:start + step]
                log_probs = F.log_softmax(F.linear(hidden[start:start + step], weight, bias).float(), dim=-1)
                losses.append(F.nll_loss(log_probs, chunk, reduction="none"))  # cross_entropy, as computed there
                probs = log_probs.exp_()
                probs[torch.arange(len(chunk), device=chunk.device), chunk] -= 1
                grads.append((probs.to(weight.dtype) @ weight).to(hidden.dtype))
        ctx.save_for_backward(torch.cat(grads))
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, grad_losses):
        (grads,) = ctx.saved_tensors
        return grads * grad_losses[:, None].to(grads.dtype), None, None, None, None


def _module_chunk_losses(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def _is_plain_linear(head) -> bool:
    return type(head) is torch.nn.Linear


def _is_partitioned(head) -> bool:
    return any(hasattr(p, "ds_id") for p in head.parameters())


def _as_matmul(head) -> bool:
    """Whether the head is applied as a matmul of its (gathered) weight rather than called as a module.

    A plain Linear is, unless ZeRO-3 partitions it and trains it: its gradient must then reach the
    weight while ZeRO-3's own backward hooks hold it gathered, which calling the module arranges.
    """
    return _is_plain_linear(head) and not (_is_partitioned(head) and any(p.requires_grad for p in head.parameters()))


def _learned_positions(hidden: torch.Tensor, labels: torch.Tensor):
    """(hidden states, next-token targets, flat positions) of the positions whose next token is learned."""
    targets = labels[:, 1:].reshape(-1)
    learned = (targets != IGNORE).nonzero().squeeze(1)
    states = hidden[:, :-1].reshape(-1, hidden.size(-1)).index_select(0, learned)
    return states, targets.index_select(0, learned), learned


def head_token_losses(head, hidden: torch.Tensor, labels: torch.Tensor, *,
                      chunk_logits: int = CHUNK_LOGITS) -> torch.Tensor:
    """:func:`token_losses` of ``head(hidden)``, shape (batch, seq-1), computing logits only for the
    learned positions and at most ``chunk_logits`` of them at a time (checkpointed when training)."""
    states, targets, learned = _learned_positions(hidden, labels)
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    step = max(1, chunk_logits // vocab)
    if not len(learned):  # nothing learned: zeros, still on the graph so the backward reaches the model
        return (hidden[:, :-1, 0] * 0).float()
    training = torch.is_grad_enabled()
    frozen = not any(p.requires_grad for p in head.parameters())
    if training and _as_matmul(head) and frozen and states.requires_grad:
        parts = [_FrozenHeadLosses.apply(states, head.weight, head.bias, targets, step)]
    else:
        chunk_losses, head_args = ((_linear_chunk_losses, (head.weight, head.bias)) if _as_matmul(head)
                                   else (_module_chunk_losses, (head,)))
        parts = []
        for start in range(0, len(learned), step):
            args = (*head_args, states[start:start + step], targets[start:start + step])
            parts.append(checkpoint(chunk_losses, *args, use_reentrant=False) if training else chunk_losses(*args))
    losses = hidden.new_zeros(labels[:, 1:].numel(), dtype=torch.float32)
    return losses.index_put((learned,), torch.cat(parts)).view(labels.size(0), -1)


def _unwrapped(model):
    """The model inside a DDP or DeepSpeed wrapper."""
    return getattr(model, "module", model)


def _inputs(batch: dict, device: str) -> dict:
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids") if k in batch}


def _fused_loss_available(head, device: str) -> bool:
    return (str(device).startswith("cuda") and _is_plain_linear(head) and not _is_partitioned(head)
            and importlib.util.find_spec("liger_kernel") is not None)


@dataclass(frozen=True)
class CausalLMLoss:
    """How a recipe gets next-token losses out of its model: chunked from the hidden states when the
    model's logits are ``head(last hidden state)``, else from whole logits (``chunked=False``)."""

    chunked: bool = True
    chunk_logits: int = CHUNK_LOGITS

    @classmethod
    def for_model(cls, model, **kw) -> CausalLMLoss:
        return cls(chunked=head_matches_logits(model), **kw)

    def token_losses(self, model, batch: dict, device: str) -> torch.Tensor:
        """Per-position losses of a micro-batch, shape (batch, seq-1), 0 where not learned."""
        labels = batch["labels"].to(device)
        head = _unwrapped(model).get_output_embeddings()
        # Under ZeRO-3 a head other than a plain Linear (LoRA on it) keeps whole logits.
        if not self.chunked or (not _is_plain_linear(head) and _is_partitioned(head)):
            return token_losses(model(**_inputs(batch, device), use_cache=False).logits, labels)
        out = model(**_inputs(batch, device), use_cache=False, output_hidden_states=True, logits_to_keep=1)
        return head_token_losses(head, out.hidden_states[-1], labels, chunk_logits=self.chunk_logits)

    def loss_sum(self, model, batch: dict, device: str) -> torch.Tensor:
        """Sum of a micro-batch's token losses (Liger's fused kernel where it applies)."""
        if self.chunked and torch.is_grad_enabled():
            head = _unwrapped(model).get_output_embeddings()
            if _fused_loss_available(head, device):
                from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

                out = model(**_inputs(batch, device), use_cache=False, output_hidden_states=True, logits_to_keep=1)
                states, targets, _ = _learned_positions(out.hidden_states[-1], batch["labels"].to(device))
                return liger_fused_linear_cross_entropy(states, head.weight, targets, head.bias,
                                                        ignore_index=IGNORE, reduction="sum")
        return self.token_losses(model, batch, device).sum()

    def answer_logps(self, model, batch: dict, device: str) -> torch.Tensor:
        """Sum of the log-probabilities of each row's labelled tokens, shape (batch,)."""
        return -self.token_losses(model, batch, device).sum(-1)


@torch.no_grad()
def head_matches_logits(model) -> bool:
    """Whether the model's logits are its output embeddings applied to its last hidden states, and it
    takes ``logits_to_keep``: one short forward on the unwrapped model, before training."""
    model = _unwrapped(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if head is None or "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    device = next(model.parameters()).device
    ids = torch.arange(1, 9, device=device)[None] % max(int(getattr(model.config, "vocab_size", 2)), 2)
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=ids, use_cache=False, output_hidden_states=True, logits_to_keep=1)
        mine = head(out.hidden_states[-1][:, -1:]).float()
        return out.logits.shape == mine.shape and torch.allclose(out.logits.float(), mine, rtol=1e-3, atol=1e-3)
    finally:
        model.train(was_training)
