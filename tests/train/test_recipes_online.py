"""PPO and GRPO (--stage=ppo/grpo) over the one loop: the reference is the adapter switched off, the
policy learns a rule-based reward with bounded KL, outputs and exact resume, refused resumes."""
import json
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import load_file

from sftkit.errors import TrainError
from sftkit.models import apply_adapter, load_model, load_tokenizer
from sftkit.train.distributed import World
from sftkit.train.loop import train
from sftkit.train.recipes.registry import get_recipe
from sftkit.train.recipes.online import ROLLOUTS_FILE, load_experience
from tests.train.toy_rollouts import online_config

CPU = World(rank=0, local_rank=0, size=1, device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: more threads only wait on each other
    yield
    torch.set_num_threads(threads)


def answer_logps(model, rollout, temperature=1.0) -> torch.Tensor:
    """An independent computation: one unpadded forward over prompt + answer."""
    ids = torch.tensor([rollout.prompt_ids + rollout.ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(rollout.prompt_ids) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(rollout.ids)[:, None])[:, 0]


def collected(config):
    recipe, tokenizer = get_recipe(config), load_tokenizer(config.base_model)
    model = recipe.build_model("cpu", torch.float32, tokenizer)
    recipe.pad_token_id = tokenizer.pad_token_id
    return recipe, model, recipe.read_data(tokenizer, progress=False)


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_reference_log_probs_are_the_adapter_off_models(stage, toy_policy, tmp_path):
    recipe, model, data = collected(online_config(toy_policy, tmp_path, stage, temperature=0.7))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)  # an adapter that changes the model, as after some training
    recipe.prepare(model, data, CPU, nullcontext)
    experience = recipe.collect(0, data.train[:2])
    assert len(experience.rollouts) == 8 and {r.group for r in experience.rollouts} == {0, 1}
    base = load_model(toy_policy, device="cpu", dtype=torch.float32).eval()
    model.eval()
    for r in experience.rollouts:
        torch.testing.assert_close(torch.tensor(r.ref_logps), answer_logps(base, r, 0.7), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(r.old_logps), answer_logps(model, r, 0.7), atol=1e-4, rtol=1e-4)
        assert len(r.advantages) == len(r.ids) and (len(r.values) == len(r.ids)) == (stage == "ppo")
    assert experience.stats["kl"] > 0.01  # the perturbed adapter moved the policy away from the reference
    assert all("lora_" in n or "value_head" in n for n, p in model.named_parameters() if p.requires_grad)


def test_the_reference_of_a_continued_adapter_is_that_adapter_frozen(toy_policy, tiny_llama, tmp_path):
    from tests.train.helpers import tiny_config

    train(tiny_config(tiny_llama, tmp_path, output_dir=str(tmp_path / "sft"), max_steps=2, val_set_size=0,
                      learning_rate=5e-2))
    config = online_config(tiny_llama, tmp_path, "grpo", lora_weights=str(tmp_path / "sft"))
    recipe, model, data = collected(config)
    recipe.prepare(model, data, CPU, nullcontext)
    experience = recipe.collect(0, data.train[:1])
    sft = apply_adapter(load_model(tiny_llama, device="cpu", dtype=torch.float32), str(tmp_path / "sft"),
                        base_model=tiny_llama).eval()
    for r in experience.rollouts:
        torch.testing.assert_close(torch.tensor(r.ref_logps), answer_logps(sft, r), atol=1e-4, rtol=1e-4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)


def mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_the_policy_learns_the_reward_with_bounded_kl(stage, toy_policy, tmp_path):
    metrics = train(online_config(toy_policy, tmp_path, stage, max_steps=24, batch_size=16, learning_rate=5e-3))
    history = metrics["history"]
    rewards, kls = [h["reward"] for h in history], [h["kl"] for h in history]
    start, end = mean(rewards[:3]), mean(rewards[-6:])
    assert start < 0.55 and end > start + 0.2, rewards  # France in under half the words at first
    assert max(kls) < 8.0, kls  # a few nats per answer: far from the ~30 of a policy that forgot its reference
    assert history[0]["kl"] == 0.0  # a new adapter starts as the reference
    assert all(0 <= h["stopped"] <= 1 and h["answer_tokens"] > 0 and "rollout_s" in h and "update_s" in h
               for h in history)


def test_outputs_logging_and_checkpoints(toy_policy, tmp_path):
    metrics = train(online_config(toy_policy, tmp_path, "ppo", max_steps=4, ppo_epochs=2, save_steps=1,
                                  report_to="tensorboard"))
    out = tmp_path / "out"
    history = metrics["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for key in ("reward", "reward_std", "kl", "kl_coef", "entropy", "answer_tokens", "stopped", "clipfrac",
                "vf_loss", "rollout_s", "update_s", "tokens_per_s", "rollout_tokens_per_s"):
        assert key in history[0], key
    assert history[0]["rollout_s"] > 0 and history[1]["rollout_s"] == 0  # two updates per rollout batch
    assert history[0]["reward"] == history[1]["reward"] and history[2]["reward"] != history[1]["reward"]
    assert metrics["run"]["loss_unit"] == "token" and metrics["data"]["prompts"] == 8
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all("lora_" in k for k in adapter)  # usable as --lora_weights: no critic in it
    critic = load_file(str(out / "critic" / "value_head.safetensors"))
    assert critic["weight"].shape == (1, 64) and critic["weight"].abs().sum() > 0
    assert json.loads((out / "critic" / "critic.json").read_text())["hidden_size"] == 64
    experience, _ = load_experience(out / "checkpoint-3" / ROLLOUTS_FILE)
    assert experience.phase == 1 and len(experience.rollouts) == 8
    assert list((out / "logs").glob("events.out.tfevents.*"))


def test_resume_is_exact_between_two_rollouts(toy_policy, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = dict(ppo_epochs=2, num_mini_batches=2, batch_size=4, micro_batch_size=2, save_steps=3)
    whole = train(online_config(toy_policy, tmp_path / "a", "ppo", max_steps=6, **common))
    train(online_config(toy_policy, tmp_path / "b", "ppo", max_steps=3, **common))  # stops inside rollout 0
    resumed = train(online_config(toy_policy, tmp_path / "b", "ppo", max_steps=6, resume_from_checkpoint="latest",
                                  **common))
    keys = ("loss", "reward", "kl", "vf_loss", "clipfrac")
    assert [[h[k] for k in keys] for h in resumed["history"]] == [[h[k] for k in keys] for h in whole["history"]]
    for name in ("adapter_model.safetensors", "critic/value_head.safetensors"):
        a, b = (load_file(str(tmp_path / x / "out" / name)) for x in "ab")
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_resume_with_another_kl_coef_or_reward_is_refused_by_name(toy_policy, tmp_path):
    from tests.data.tiny_scorers import build_reward_model

    reward_model = build_reward_model(tmp_path / "rm", seed=1)
    common = dict(reward_model=str(reward_model), max_steps=1, save_steps=1)
    train(online_config(toy_policy, tmp_path, "grpo", **common))
    with pytest.raises(TrainError, match=r"--kl_coef: 0.05 in the checkpoint, 0.2 now"):
        train(online_config(toy_policy, tmp_path, "grpo", resume_from_checkpoint="latest", kl_coef=0.2,
                            **{**common, "max_steps": 2}))
    build_reward_model(reward_model, seed=2)  # retrained in place: same path, other weights
    with pytest.raises(TrainError, match=r"--reward_model_sha256: '[0-9a-f]+' in the checkpoint, '[0-9a-f]+' now"):
        train(online_config(toy_policy, tmp_path, "grpo", resume_from_checkpoint="latest",
                            **{**common, "max_steps": 2}))


def test_a_rollout_used_once_is_trained_on_policy_even_under_bf16(toy_policy, tmp_path):
    """One pass, one mini-batch: the ratio is exactly 1 (the update's own log-probs, detached, as TRL does),
    not the rounding between the rollout forward and the update's batch under bf16 autocast."""
    metrics = train(online_config(toy_policy, tmp_path, "grpo", max_steps=2, bf16=True, micro_batch_size=4))
    assert all(h["approx_kl"] == 0.0 and h["clipfrac"] == 0.0 for h in metrics["history"])
