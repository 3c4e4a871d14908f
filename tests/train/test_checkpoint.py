"""A checkpoint folder appears whole under its name or not at all (sftkit.atomic), so 'latest' never
picks a half-written one."""
import json

import pytest
import torch

from sftkit.train.checkpoint import list_checkpoints, resolve_resume, save_checkpoint
from sftkit.train.distributed import World

WORLD = World(rank=0, local_rank=0, size=1, device="cpu")


def save(out, step: int, marker: str, fail: bool = False):
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)

    def save_adapter(folder):
        (folder / "adapter_model.safetensors").write_text(marker)
        if fail:
            raise RuntimeError("disk full mid-checkpoint")

    return save_checkpoint(str(out), step, world=WORLD, save_adapter=save_adapter, optimizer=optimizer,
                           scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), engine=None,
                           trainer_state={"step": step, "epoch": 0, "history": []}, save_total_limit=0)


def test_a_failed_checkpoint_leaves_the_earlier_ones_and_nothing_else(tmp_path):
    save(tmp_path, 2, "two")
    with pytest.raises(RuntimeError, match="disk full"):
        save(tmp_path, 4, "four", fail=True)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]
    assert resolve_resume("latest", str(tmp_path)) == tmp_path / "checkpoint-2"


def test_saving_a_step_again_replaces_its_folder_whole(tmp_path):
    save(tmp_path, 2, "first")
    (tmp_path / "checkpoint-2" / "from_the_first_run").write_text("x")
    save(tmp_path, 2, "second")
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-2"]
    assert (tmp_path / "checkpoint-2" / "adapter_model.safetensors").read_text() == "second"
    assert not (tmp_path / "checkpoint-2" / "from_the_first_run").exists()
    assert json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2"]
