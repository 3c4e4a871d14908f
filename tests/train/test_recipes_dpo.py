"""DPO (--stage=dpo): the loss, the reference model without a second copy, learning, resume."""
import pytest
import torch
from safetensors.torch import load_file

from sftkit.models import apply_adapter, load_model, load_tokenizer
from sftkit.train.batching import collate_pairs
from sftkit.train.distributed import World
from sftkit.train.loop import train
from sftkit.train.loss import CausalLMLoss
from sftkit.train.recipes.dpo import DPORecipe, dpo_loss, pair_logps
from tests.train.helpers import tiny_config
from tests.train.toy_preferences import pair_config

CPU = World(rank=0, local_rank=0, size=1, device="cpu")


def test_dpo_loss_formulas():
    chosen, rejected = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
    ref_c, ref_r = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    h = torch.tensor([2.0, -1.0])  # (chosen - ref) - (rejected - ref)
    losses, reward_c, reward_r = dpo_loss(chosen, rejected, ref_c, ref_r, 0.5, "sigmoid")
    torch.testing.assert_close(losses, -torch.nn.functional.logsigmoid(0.5 * h))
    torch.testing.assert_close(reward_c - reward_r, 0.5 * h)
    ipo, _, _ = dpo_loss(chosen, rejected, ref_c, ref_r, 0.5, "ipo")
    torch.testing.assert_close(ipo, (h - 1.0) ** 2)


def logps_of(model, examples, pad_id):
    with torch.no_grad():
        # whole logits: the recipe's chunked log-probs are checked against the plain computation
        return pair_logps(CausalLMLoss(chunked=False), model.eval(), collate_pairs([[e] for e in examples], pad_id),
                          "cpu")


def test_reference_is_the_model_with_the_adapter_switched_off(tiny_llama, tmp_path):
    config = pair_config(tiny_llama, tmp_path, "dpo")
    recipe, tokenizer = DPORecipe(config), load_tokenizer(tiny_llama)
    model = recipe.build_model("cpu", torch.float32, tokenizer)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # an adapter that changes the model, as after some training
    data = recipe.read_data(tokenizer, progress=False)
    recipe.prepare(model, data, CPU, lambda: torch.no_grad())
    base = load_model(tiny_llama, device="cpu", dtype=torch.float32)
    chosen, rejected = logps_of(base, data.train[:4], tokenizer.pad_token_id)
    torch.testing.assert_close(torch.tensor([e.ref_chosen for e in data.train[:4]]), chosen, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(torch.tensor([e.ref_rejected for e in data.train[:4]]), rejected, atol=1e-4, rtol=1e-5)
    policy_chosen, _ = logps_of(model, data.train[:4], tokenizer.pad_token_id)
    assert not torch.allclose(policy_chosen, chosen, atol=1e-2)  # the adapter is back on after prepare
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_reference_continuing_an_sft_adapter_is_that_adapter_frozen(tiny_llama, tmp_path):
    train(tiny_config(tiny_llama, tmp_path, output_dir=str(tmp_path / "sft"), max_steps=2, val_set_size=0,
                      learning_rate=5e-2))
    config = pair_config(tiny_llama, tmp_path, "dpo", lora_weights=str(tmp_path / "sft"))
    recipe, tokenizer = DPORecipe(config), load_tokenizer(tiny_llama)
    model = recipe.build_model("cpu", torch.float32, tokenizer)
    data = recipe.read_data(tokenizer, progress=False)
    recipe.prepare(model, data, CPU, lambda: torch.no_grad())
    sft = apply_adapter(load_model(tiny_llama, device="cpu", dtype=torch.float32), str(tmp_path / "sft"),
                        base_model=tiny_llama)
    chosen, _ = logps_of(sft, data.train[:4], tokenizer.pad_token_id)
    torch.testing.assert_close(torch.tensor([e.ref_chosen for e in data.train[:4]]), chosen, atol=1e-4, rtol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)  # the copy being trained, never the reference


def test_dpo_raises_the_margin_and_leaves_the_base_weights_untouched(tiny_llama, tmp_path):
    metrics = train(pair_config(tiny_llama, tmp_path, "dpo", max_steps=6, eval_steps=3, beta=0.5))
    first = metrics["history"][0]
    assert first["margin"] == pytest.approx(0.0, abs=1e-5)  # a new adapter starts as the reference
    assert metrics["eval_margin"] > 0.1 and metrics["eval_accuracy"] > 0.5, metrics
    assert metrics["eval_rewards_chosen"] > metrics["eval_rewards_rejected"]
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)  # nothing but the adapter was trained or saved
    # With the adapter switched off, the trained model is the base model exactly.
    tokenizer = load_tokenizer(tiny_llama)
    ids = tokenizer("<human>: Who are you?\n<bot>: I am", return_tensors="pt")
    base = load_model(tiny_llama, device="cpu", dtype=torch.float32).eval()
    with torch.no_grad():
        expected = base(**ids).logits
        tuned = apply_adapter(load_model(tiny_llama, device="cpu", dtype=torch.float32), str(tmp_path / "out"),
                              base_model=tiny_llama).eval()
        with tuned.disable_adapter():
            torch.testing.assert_close(tuned(**ids).logits, expected)
        assert not torch.allclose(tuned(**ids).logits, expected, atol=1e-3)


def test_dpo_resume_is_exact(tiny_llama, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = dict(lr_scheduler="constant", save_steps=2, lora_dropout=0.1, val_set_size=0, dpo_loss="ipo")
    train(pair_config(tiny_llama, tmp_path / "a", "dpo", max_steps=4, **common))
    train(pair_config(tiny_llama, tmp_path / "b", "dpo", max_steps=2, **common))
    resumed = train(pair_config(tiny_llama, tmp_path / "b", "dpo", max_steps=4, resume_from_checkpoint="latest",
                                **common))
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    a = load_file(str(tmp_path / "a" / "out" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


def test_pairs_identical_once_cut_are_counted_and_none_left_is_a_clear_error(tiny_llama, tmp_path, capsys):
    """Issue 22 item 5: answers that differ only past --cutoff_len would teach DPO nothing."""
    from sftkit.errors import DataError
    from tests.train.toy_preferences import toy_pairs, write_pairs

    same = "The capital of France is Paris, " + "a city " * 30
    twins = [{"prompt": "What is the capital of France?", "chosen": same + "of light.", "rejected": same + "of rain."}]
    path = write_pairs(tmp_path / "twins.json", twins * 4 + toy_pairs(8))
    metrics = train(pair_config(tiny_llama, tmp_path, "dpo", data_path=path, val_set_size=0, max_steps=1,
                                cutoff_len=32))
    assert metrics["data"]["train"]["skipped_identical_after_truncation"] == 4
    assert metrics["data"]["train"]["kept"] == 8
    out = capsys.readouterr().out
    assert "8 train / 0 valid pairs" in out and "skipped 4 (identical after truncation 4)" in out
    with pytest.raises(DataError, match=r"twins.json: no training pairs left after tokenizing 4: 4 became identical "
                                        r"when cut at --cutoff_len=32"):
        train(pair_config(tiny_llama, tmp_path, "dpo", data_path=write_pairs(tmp_path / "twins.json", twins * 4),
                          val_set_size=0, max_steps=1, cutoff_len=32, output_dir=str(tmp_path / "out2")))
