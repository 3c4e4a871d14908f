"""The chunked next-token loss equals the plain one (values and gradients) and never holds whole logits."""
import pytest
import torch
from transformers import CohereConfig, CohereForCausalLM, LlamaConfig, LlamaForCausalLM

from sftkit.models import load_tokenizer
from sftkit.train.batching import collate
from sftkit.train.config import TrainConfig
from sftkit.train.data import Conversation
from sftkit.train.loss import CausalLMLoss, head_matches_logits
from sftkit.train.modeling import build_causal_lm
from sftkit.train.tokenize import tokenize_all
from tests.train.test_batching import CONVERSATIONS

PLAIN = CausalLMLoss(chunked=False)


def batch_for(tokenizer, pack: bool = False, block_mask: bool = True):
    convs = [Conversation(t, str(i)) for i, t in enumerate(CONVERSATIONS * 2)]
    examples = tokenize_all(convs, tokenizer, "human_bot", 64, progress=False).examples
    rows = [examples[:4], examples[4:]] if pack else [[e] for e in examples]
    return collate(rows, tokenizer.pad_token_id, block_mask=block_mask and pack)


def chunked_for(model, vocab: int) -> CausalLMLoss:
    """The model's own choice, with chunks of 3 tokens so that a batch spans many of them."""
    loss = CausalLMLoss.for_model(model, chunk_logits=3 * vocab)
    assert loss.chunked
    return loss


def loss_and_grads(lm_loss: CausalLMLoss, model, batch, autocast=None):
    model.zero_grad(set_to_none=True)
    with autocast or torch.autocast("cpu", enabled=False):
        loss = lm_loss.loss_sum(model, batch, "cpu")
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(chunked, plain, tol=1e-5):
    torch.testing.assert_close(chunked[0], plain[0], atol=tol, rtol=tol)
    assert chunked[1].keys() == plain[1].keys() and plain[1]
    for name in plain[1]:
        torch.testing.assert_close(chunked[1][name], plain[1][name], atol=tol, rtol=1e-4, msg=name)


def tied_llama(tiny_llama, tmp_path) -> str:
    """The tiny Llama with its LM head tied to the input embeddings (as SmolLM2's)."""
    tokenizer = load_tokenizer(tiny_llama)
    config = LlamaConfig.from_pretrained(tiny_llama)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tied")
    tokenizer.save_pretrained(tmp_path / "tied")
    return str(tmp_path / "tied")


@pytest.mark.parametrize("case", ["lora", "lora_on_the_head", "full", "full_tied", "lora_4bit", "bf16_autocast",
                                  "packed"])
def test_chunked_loss_equals_plain_loss_and_gradients(case, tiny_llama, tmp_path):
    settings = {"lora": {}, "lora_on_the_head": {"lora_target_modules": ["q_proj", "v_proj", "lm_head"]},
                "full": {"lora_r": 0}, "full_tied": {"lora_r": 0}, "lora_4bit": {"train_4bit": True},
                "bf16_autocast": {}, "packed": {"pack": True}}[case]
    base = tied_llama(tiny_llama, tmp_path) if case == "full_tied" else tiny_llama
    torch.manual_seed(0)
    model = build_causal_lm(TrainConfig(base_model=base, lora_dropout=0.0, **settings), "cpu", torch.float32)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)  # a trained adapter: its gradients and the base's differ from the start
    tokenizer = load_tokenizer(base)
    batch = batch_for(tokenizer, pack=case == "packed")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if case == "bf16_autocast" else None
    chunked = loss_and_grads(chunked_for(model, len(tokenizer)), model, batch, autocast)
    plain = loss_and_grads(PLAIN, model, batch, autocast)
    assert_same(chunked, plain, tol=1e-2 if autocast else 1e-5)
    if case == "full_tied":
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert "model.embed_tokens.weight" in plain[1]


def test_chunked_per_row_log_probs_equal_plain_ones(tiny_neox):
    model = build_causal_lm(TrainConfig(base_model=tiny_neox), "cpu", torch.float32).eval()
    tokenizer = load_tokenizer(tiny_neox)
    batch = batch_for(tokenizer)
    with torch.no_grad():
        chunked = chunked_for(model, len(tokenizer)).answer_logps(model, batch, "cpu")
        plain = PLAIN.answer_logps(model, batch, "cpu")
    assert chunked.shape == (len(batch["input_ids"]),)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)


def largest_saved_tensor(lm_loss, model, batch) -> int:
    """Elements of the largest tensor autograd saves for the backward of the loss."""
    sizes = [0]

    def pack(tensor):  # what it holds in memory: an expanded view of a weight holds the weight
        sizes.append(tensor.untyped_storage().nbytes() // tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lm_loss.loss_sum(model, batch, "cpu").backward()
    return max(sizes)


@pytest.mark.parametrize("lora_r", [0, 8])
def test_whole_logits_are_never_saved_for_the_backward(tiny_llama, lora_r):
    """Neither with a trained head (full fine-tuning: checkpointed chunks) nor with a frozen one
    (LoRA: each chunk's gradient worked out in the forward)."""
    model = build_causal_lm(TrainConfig(base_model=tiny_llama, lora_r=lora_r), "cpu", torch.float32)
    tokenizer = load_tokenizer(tiny_llama)
    batch = batch_for(tokenizer)
    logits = batch["input_ids"].numel() * len(tokenizer)
    assert largest_saved_tensor(PLAIN, model, batch) >= logits - batch["input_ids"].size(0) * len(tokenizer)
    # the largest left is an MLP activation (tokens x 128, a third of the tokens x 384 logits)
    assert largest_saved_tensor(chunked_for(model, len(tokenizer)), model, batch) < logits / 2


def test_a_frozen_head_computes_each_chunks_logits_once(tiny_llama, monkeypatch):
    """With LoRA the head's matmuls are one per chunk forward and one per chunk for the gradient,
    not a third to recompute the logits in the backward, and the loss and gradients stay the plain ones."""
    import torch.nn.functional as F

    from sftkit.train import loss as loss_module

    model = build_causal_lm(TrainConfig(base_model=tiny_llama, lora_dropout=0.0), "cpu", torch.float32)
    tokenizer = load_tokenizer(tiny_llama)
    batch = batch_for(tokenizer)
    vocab = len(tokenizer)
    calls = []
    real_linear = F.linear

    def counting_linear(x, weight, bias=None):
        if weight.shape[0] == vocab and x.dim() == 2:  # the loss's chunks (the model's own head call is 3-D)
            calls.append(x.shape[0])
        return real_linear(x, weight, bias)

    monkeypatch.setattr(loss_module.F, "linear", counting_linear)
    chunked = loss_and_grads(chunked_for(model, vocab), model, batch)
    learned = int((batch["labels"][:, 1:] != -100).sum())
    assert sum(calls) == learned and len(calls) == -(-learned // 3)  # each chunk's logits once
    monkeypatch.setattr(loss_module.F, "linear", real_linear)
    assert_same(chunked, loss_and_grads(PLAIN, model, batch))


def test_models_whose_logits_are_not_the_head_of_the_hidden_states_keep_the_plain_loss(tiny_llama):
    """Cohere scales its logits after the head: the load-time check finds it, and the loss stays right."""
    tokenizer = load_tokenizer(tiny_llama)
    torch.manual_seed(0)
    model = CohereForCausalLM(CohereConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           logit_scale=0.25, pad_token_id=tokenizer.pad_token_id))
    model.get_output_embeddings().weight.data.normal_(0, 1.0)  # logits far from uniform, so the scale shows
    assert not head_matches_logits(model)
    batch = batch_for(tokenizer)
    with torch.no_grad():
        chosen = CausalLMLoss.for_model(model).loss_sum(model, batch, "cpu")
        forced = CausalLMLoss(chunked=True).loss_sum(model, batch, "cpu")
        plain = PLAIN.loss_sum(model, batch, "cpu")
    torch.testing.assert_close(chosen, plain)
    assert not torch.allclose(forced, plain, rtol=1e-2)  # why the check exists
