"""Two-process torchrun (gloo) agrees with one process for the reward-model and DPO stages."""
import pytest
import torch
from safetensors.torch import load_file

from sftkit.train.loop import train
from tests.train.helpers import tiny_config
from tests.train.test_distributed import FLAGS, torchrun
from tests.train.toy_preferences import write_pairs

SAVED = {"rm": "model.safetensors", "dpo": "adapter_model.safetensors"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_two_processes_match_one(stage, tiny_llama, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.json")
    metrics = torchrun(tmp_path, tiny_llama, "ddp", stage=stage, data_path=pairs, val_set_size=4)
    assert metrics["run"]["world_size"] == 2 and metrics["step"] == 3
    first, second = metrics["run"]["rank_adapter_checksums"]
    assert first == second
    single = train(tiny_config(tiny_llama, tmp_path, **{**FLAGS, "output_dir": str(tmp_path / "single"),
                                                        "stage": stage, "data_path": pairs}))
    assert metrics["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-4, abs=1e-5)
    ddp = load_file(str(tmp_path / "ddp" / SAVED[stage]))
    one = load_file(str(tmp_path / "single" / SAVED[stage]))
    assert ddp.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_deepspeed_zero3_reward_model_is_saved_whole(tiny_llama, tmp_path):
    from sftkit.reward import RewardModelScorer
    from tests.train.test_distributed import REPO

    metrics = torchrun(tmp_path, tiny_llama, "zero3", stage="rm", data_path=write_pairs(tmp_path / "pairs.json"),
                       deepspeed=str(REPO / "configs" / "deepspeed" / "zero3.json"))
    assert metrics["step"] == 3 and metrics["run"]["deepspeed"]
    saved = load_file(str(tmp_path / "zero3" / "model.safetensors"))
    assert all(v.numel() > 0 for v in saved.values()) and "score.weight" in saved  # gathered, head included
    scorer = RewardModelScorer(str(tmp_path / "zero3"), device="cpu")
    assert len(scorer.score(["Who are you?"], ["I am a helpful assistant."])) == 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_online_stages_in_two_processes_match_one(stage, toy_policy, tmp_path):
    """Each rank samples its share of every rollout batch (seeded per chunk), all ranks train on the whole
    batch cut the same way: the run equals one process accumulating the same micro-batches."""
    from tests.train.toy_rollouts import write_prompts

    online = dict(stage=stage, data_path=write_prompts(tmp_path / "prompts.json"), val_set_size=0,
                  reward_funcs="tests.train.toy_rollouts:target_fraction", rollouts_per_prompt=2, max_new_tokens=8,
                  num_mini_batches=2, max_steps=4, save_steps=0)
    metrics = torchrun(tmp_path, toy_policy, "ddp", **online)
    assert metrics["run"]["world_size"] == 2 and metrics["step"] == 4
    first, second = metrics["run"]["rank_adapter_checksums"]
    assert first == second
    single = train(tiny_config(toy_policy, tmp_path, **{**FLAGS, **online, "output_dir": str(tmp_path / "single"),
                                                        "reward_funcs": [online["reward_funcs"]]}))
    for key in ("reward", "kl", "answer_tokens"):
        assert [h[key] for h in metrics["history"]] == pytest.approx([h[key] for h in single["history"]],
                                                                     rel=1e-4, abs=1e-5), key
    assert [h["loss"] for h in metrics["history"]] == pytest.approx([h["loss"] for h in single["history"]],
                                                                    rel=1e-3, abs=1e-5)
    ddp = load_file(str(tmp_path / "ddp" / "adapter_model.safetensors"))
    one = load_file(str(tmp_path / "single" / "adapter_model.safetensors"))
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_online_stages_under_deepspeed_zero3_generate_in_step_and_match_one_process(stage, toy_policy, tmp_path):
    """ZeRO-3 partitions the weights: rollouts are generated with synced_gpus on the weights being trained."""
    from tests.train.test_distributed import REPO
    from tests.train.toy_rollouts import write_prompts

    online = dict(stage=stage, data_path=write_prompts(tmp_path / "prompts.json"), val_set_size=0,
                  reward_funcs="tests.train.toy_rollouts:target_fraction", rollouts_per_prompt=2, max_new_tokens=8,
                  max_steps=2, save_steps=1, micro_batch_size=1)
    metrics = torchrun(tmp_path, toy_policy, "zero3", deepspeed=str(REPO / "configs" / "deepspeed" / "zero3.json"),
                       **online)
    assert metrics["step"] == 2 and metrics["run"]["deepspeed"]
    single = train(tiny_config(toy_policy, tmp_path, **{**FLAGS, **online, "output_dir": str(tmp_path / "single"),
                                                        "reward_funcs": [online["reward_funcs"]]}))
    assert [h["reward"] for h in metrics["history"]] == pytest.approx([h["reward"] for h in single["history"]])
    adapter = load_file(str(tmp_path / "zero3" / "adapter_model.safetensors"))
    assert adapter and all(v.numel() > 0 for v in adapter.values())
    assert (tmp_path / "zero3" / "checkpoint-2" / "rollouts.safetensors").is_file()
