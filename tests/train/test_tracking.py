"""--report_to: TensorBoard, MLflow (local file store) and W&B (offline) each get the run's settings,
the logged scalars by step and the final files; read back from what each one wrote."""
import json

import pytest

from sftkit.flags import FlagError
from sftkit.train.loop import train
from sftkit.train.tracking import parse_report_to
from tests.train.helpers import tiny_config


def wandb_records(raw: bytes):
    """The protobuf records of a ``.wandb`` file: a 7-byte W&B header, then LevelDB's log format
    (32 KiB blocks of records with a 7-byte header: crc32c, length, type full/first/middle/last)."""
    assert raw[:4] == b":W&B"
    block, at, pending = 32768, 7, b""
    while at + 7 <= len(raw):
        if block - at % block < 7:  # a block's tail too short for a header is padding
            at += block - at % block
            continue
        length = int.from_bytes(raw[at + 4:at + 6], "little")
        kind, body = raw[at + 6], raw[at + 7:at + 7 + length]
        at += 7 + length
        if kind == 0 and length == 0:
            break
        pending = body if kind in (1, 2) else pending + body
        if kind in (1, 4):
            yield pending
            pending = b""


def test_report_to_parses_subsets_and_refuses_unknown_names(tiny_llama, tmp_path):
    assert parse_report_to("tensorboard, MLflow,wandb") == ["tensorboard", "mlflow", "wandb"]
    assert parse_report_to("none") == [] and parse_report_to("") == []
    with pytest.raises(FlagError, match="choose from tensorboard, mlflow, wandb"):
        tiny_config(tiny_llama, tmp_path, report_to="tensorboard,comet")


def test_every_tracker_gets_params_metrics_by_step_and_artifacts(tiny_llama, tmp_path, monkeypatch):
    mlruns = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlruns.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, as the brief asks
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(tiny_llama, tmp_path, max_steps=3, report_to="tensorboard,mlflow,wandb", run_id="tracked")
    final = train(config)
    out = tmp_path / "out"

    # TensorBoard: the event file holds train/loss at steps 1..3.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert "eval/eval_loss" in events.Tags()["scalars"]

    # MLflow: read back through its own client from the file store.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlruns.as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == str(config.learning_rate)
    assert run.data.params["report_to"] == "tensorboard,mlflow,wandb"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    assert history[-1].value == pytest.approx(final["history"][-1]["loss"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "run_config.yaml"}

    # W&B offline: the run's record file (read with wandb's own reader) holds config and history; the
    # saved files sit in its files/ folder.
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert json.loads((run_dir / "files" / "metrics.json").read_text())["step"] == 3
    assert (run_dir / "files" / "run_config.yaml").is_file()
    from wandb.proto import wandb_internal_pb2

    steps, config_items = [], {}
    for data in wandb_records(next(run_dir.glob("*.wandb")).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or ".".join(item.nested_key): item.value_json for item in record.history.item}
            if "loss" in items:
                steps.append(int(items["_step"]))
        elif kind in ("run", "config"):
            update = record.run.config.update if kind == "run" else record.config.update
            config_items.update({item.key or ".".join(item.nested_key): item.value_json for item in update})
    assert steps == [1, 2, 3]
    assert json.loads(config_items["learning_rate"]) == config.learning_rate
