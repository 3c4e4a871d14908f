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
