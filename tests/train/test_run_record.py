"""h2oGPT's batch arithmetic and flags, the settings saved with checkpoints, the resume check, one writer."""
import json
import os
from pathlib import Path

import pytest
import yaml

from sftkit import flags, lock
from sftkit.errors import FlagError, LockError, TrainError
import sftkit.train.loop as loop_module
from sftkit.train.config import TrainConfig
from sftkit.train.loop import train
from sftkit.train.run_record import differences, read_run_config
from tests.test_atomic import dead_pid
from tests.train.helpers import ROWS, tiny_config, write_rows


@pytest.mark.parametrize("batch,micro,processes,accumulation", [(8, 4, 1, 2), (6, 4, 1, 1), (7, 1, 2, 3),
                                                                 (128, 4, 3, 10), (2, 4, 2, 1)])
def test_accumulation_is_integer_division_as_in_h2ogpt(batch, micro, processes, accumulation):
    config = TrainConfig(batch_size=batch, micro_batch_size=micro)
    assert config.gradient_accumulation(processes) == accumulation
    assert config.effective_batch_size(processes) == accumulation * micro * processes


def test_h2ogpt_flags_are_accepted_or_rejected_by_name():
    config = flags.parse(TrainConfig, {"run_id": 17, "save_code": True, "llama_flash_attn": True,
                                       "use_auth_token": True, "resume_download": False})
    assert config.run_id == "17" and config.save_code and not config.resume_download
    assert config.hub_options() == {"attn_implementation": "flash_attention_2", "token": True}
    assert TrainConfig(use_auth_token="hf_abc").hub_options() == {"token": "hf_abc"}
    assert TrainConfig().hub_options() == {}
    with pytest.raises(FlagError, match=r"--llama_type has no meaning here: the architecture"):
        flags.parse(TrainConfig, {"llama_type": True})
    with pytest.raises(FlagError, match=r"unknown flag: --batchsize \(did you mean --batch_size\?\)"):
        flags.parse(TrainConfig, {"batchsize": 3})


def test_uneven_batch_trains_the_effective_batch_and_records_the_run(tiny_llama, tmp_path, capsys):
    config = tiny_config(tiny_llama, tmp_path, batch_size=6, micro_batch_size=4, max_steps=2, run_id="17",
                         save_code=True, use_auth_token="hf_secret")
    metrics = train(config)
    out = capsys.readouterr().out
    assert "each step trains on 4 sequences (1 accumulation steps)" in out
    assert "[17] plan: 2 steps" in out
    assert metrics["run"]["gradient_accumulation"] == 1
    (settings,) = read_run_config(tmp_path / "out")
    assert settings["run_id"] == "17" and settings["effective_batch_size"] == 4 and settings["batch_size"] == 6
    assert settings["use_auth_token"] == "<set>"  # never the token itself
    assert len(settings["data_path_sha256"]) == 64
    code = tmp_path / "out" / "code"
    assert (code / "sftkit" / "train" / "loop.py").read_text() == Path(loop_module.__file__).read_text()
    assert (code / "finetune.py").is_file() and not list(code.rglob("__pycache__"))


def test_trainer_state_json_is_hugging_face_shaped(tiny_llama, tmp_path):
    from transformers import TrainerState

    train(tiny_config(tiny_llama, tmp_path, max_steps=2, save_steps=2, eval_steps=1))
    path = tmp_path / "out" / "checkpoint-2" / "trainer_state.json"
    state = TrainerState.load_from_json(str(path))
    assert state.global_step == 2 and state.max_steps == 2 and state.logging_steps == 1
    train_logs = [r for r in state.log_history if "loss" in r]
    assert [r["step"] for r in train_logs] == [1, 2]
    assert train_logs[0]["learning_rate"] > 0 and all("lr" not in r and "epoch" in r for r in train_logs)
    evals = [r for r in state.log_history if "eval_loss" in r]
    assert state.best_metric == min(r["eval_loss"] for r in evals)
    assert state.best_global_step in (1, 2)
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # as save_to_json writes it


def _first_half(tiny_llama, tmp_path, **overrides):
    settings = dict(max_steps=2, save_steps=2, lr_scheduler="constant")
    settings.update(overrides)
    train(tiny_config(tiny_llama, tmp_path, **settings))


@pytest.mark.parametrize("change,named", [
    (dict(learning_rate=5e-3), "--learning_rate: 0.01 in the checkpoint, 0.005 now"),
    (dict(seed=1), "--seed: 0 in the checkpoint, 1 now"),
    (dict(batch_size=8), "--batch_size"),
    (dict(cutoff_len=48), "--cutoff_len"),
    (dict(lora_r=4), "--lora_r"),
    (dict(prompt_type="instruct"), "--prompt_type"),
])
def test_resume_refuses_a_changed_meaning(tiny_llama, tmp_path, change, named):
    _first_half(tiny_llama, tmp_path)
    before = (tmp_path / "out" / "run_config.yaml").read_text()
    with pytest.raises(TrainError, match="would change what it learns") as refused:
        train(tiny_config(tiny_llama, tmp_path, max_steps=4, save_steps=2, lr_scheduler="constant",
                          resume_from_checkpoint="latest", **change))
    assert named in str(refused.value) and "new --output_dir" in str(refused.value)
    assert (tmp_path / "out" / "run_config.yaml").read_text() == before


def test_resume_refuses_changed_data_content_under_the_same_path(tiny_llama, tmp_path):
    data = write_rows(tmp_path / "mine.json")
    _first_half(tiny_llama, tmp_path, data_path=data)
    write_rows(tmp_path / "mine.json", rows=list(reversed(ROWS)))
    with pytest.raises(TrainError, match="--data_path_sha256"):
        train(tiny_config(tiny_llama, tmp_path, max_steps=4, save_steps=2, lr_scheduler="constant",
                          resume_from_checkpoint="latest", data_path=data))


def test_resume_allows_safe_changes_and_appends_to_run_config(tiny_llama, tmp_path):
    _first_half(tiny_llama, tmp_path)
    out, killed = tmp_path / "out", dead_pid()
    for leftover in (f".checkpoint-3.tmp-{killed}", f".entries.tmp-{killed}"):  # what a kill -9 mid-write leaves
        (out / leftover).mkdir()
        (out / leftover / "adapter_model.safetensors").write_bytes(b"half")
    # Killed while re-saving checkpoint-2 over itself, between setting the old one aside and renaming
    # the new one in: 'latest' must find the old one put back.
    (out / "checkpoint-2").rename(out / f".checkpoint-2.old-{killed}")
    train(tiny_config(tiny_llama, tmp_path, max_steps=4, save_steps=1, logging_steps=2, eval_steps=1,
                      lr_scheduler="constant", resume_from_checkpoint="latest", run_id="second"))
    first, resumed = read_run_config(tmp_path / "out")
    assert first["max_steps"] == 2 and first["save_steps"] == 2 and first["run_id"] == ""
    entry = resumed["resumed"]
    assert entry["at_step"] == 2 and entry["from"].endswith("checkpoint-2")
    assert entry["changed"]["max_steps"] == {"was": 2, "now": 4}
    assert "learning_rate" not in entry["changed"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != lock.LOCK_NAME]


def test_differences_treat_unknown_settings_as_meaningful():
    assert differences({"new_flag": 1, "logging_steps": 1}, {"new_flag": 2, "logging_steps": 5}) == {"new_flag": (1, 2)}


def test_a_checkpoint_without_settings_is_not_resumed_blindly(tiny_llama, tmp_path):
    _first_half(tiny_llama, tmp_path)
    (tmp_path / "out" / "checkpoint-2" / "run_settings.json").unlink()
    with pytest.raises(TrainError, match="no run_settings.json"):
        train(tiny_config(tiny_llama, tmp_path, max_steps=4, save_steps=2, lr_scheduler="constant",
                          resume_from_checkpoint="latest"))


def test_a_packed_checkpoint_of_an_earlier_release_is_not_resumed_with_another_packing(tiny_llama, tmp_path):
    """Earlier releases packed greedily and wrote no 'packing' setting: their rows per step differ."""
    _first_half(tiny_llama, tmp_path, pack=True)
    saved = tmp_path / "out" / "checkpoint-2" / "run_settings.json"
    settings = json.loads(saved.read_text())
    assert settings.pop("packing") == "best_fit_decreasing"
    saved.write_text(json.dumps(settings))
    with pytest.raises(TrainError, match="--packing: None in the checkpoint, 'best_fit_decreasing' now"):
        train(tiny_config(tiny_llama, tmp_path, max_steps=4, save_steps=2, lr_scheduler="constant", pack=True,
                          resume_from_checkpoint="latest"))


def test_a_second_writer_fails_at_once_naming_the_holder(tiny_llama, tmp_path):
    with lock.hold(tmp_path / "out", "test"):
        with pytest.raises(LockError, match=f"PID {os.getpid()}"):
            train(tiny_config(tiny_llama, tmp_path, max_steps=1))
    train(tiny_config(tiny_llama, tmp_path, max_steps=1))  # the lock file alone is no "existing output"
    assert yaml.safe_load((tmp_path / "out" / "run_config.yaml").read_text())["max_steps"] == 1
