"""Experiment logging where people already look: TensorBoard, MLflow, Weights & Biases (``--report_to``,
any subset). One interface: the run's settings as params once, the logged scalars by step, and
files (final metrics, run settings, the data card) as artifacts at the end. Each backend's package
is imported only when asked for. MLflow logs to ``MLFLOW_TRACKING_URI`` (a tracking server, or
``file:./mlruns`` with ``MLFLOW_ALLOW_FILE_STORE=true``; mlflow's own default, ``sqlite:///mlflow.db``,
needs the full ``mlflow`` package rather than ``mlflow-skinny``); W&B follows its own settings
(``WANDB_MODE=offline`` writes the run under output_dir/wandb without a login).
"""
from __future__ import annotations

import json
from pathlib import Path

REPORTERS = ("tensorboard", "mlflow", "wandb")


def parse_report_to(value: str) -> list[str]:
    """``"tensorboard,mlflow"`` -> ``["tensorboard", "mlflow"]``; ``none`` (or empty) -> ``[]``."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    return [] if names in ([], ["none"]) else list(dict.fromkeys(names))


def scalars(record: dict) -> dict[str, float]:
    """The numeric entries of a log record (not the step, not text samples)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_params(settings: dict) -> dict[str, str]:
    """Settings as the flat string params trackers store (lists and dicts as JSON)."""
    return {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in settings.items()}


class TensorBoard:
    def __init__(self, output_dir: Path, run_name: str, params: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output_dir / "logs"))
        self.writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in flat_params(params).items()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{'eval' if key.startswith('eval_') else 'train'}/{key}", value, step)

    def finish(self, artifacts: list[Path]) -> None:
        self.writer.close()


class MLflow:
    def __init__(self, output_dir: Path, run_name: str, params: dict):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(output_dir.resolve().name)
        self.run = mlflow.start_run(run_name=run_name or output_dir.name)
        mlflow.log_params({k: v[:6000] for k, v in flat_params(params).items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def finish(self, artifacts: list[Path]) -> None:
        for path in artifacts:
            self.mlflow.log_artifact(str(path))
        self.mlflow.end_run()


class WandB:
    def __init__(self, output_dir: Path, run_name: str, params: dict):
        import wandb

        self.run = wandb.init(project=output_dir.resolve().name, name=run_name or output_dir.name,
                              dir=str(output_dir), config=params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, artifacts: list[Path]) -> None:
        for path in artifacts:
            self.run.save(str(path), base_path=str(path.parent), policy="now")
        self.run.finish()


BACKENDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


class Trackers:
    """Every backend asked for, behind one interface (none: every call does nothing)."""

    def __init__(self, names: list[str], output_dir: Path, run_name: str, params: dict):
        self.backends = [BACKENDS[name](Path(output_dir), run_name, params) for name in names]

    def log(self, record: dict, step: int) -> None:
        metrics = scalars(record)
        for backend in self.backends:
            backend.log(metrics, step)

    def finish(self, artifacts: list[Path]) -> None:
        for backend in self.backends:
            backend.finish([p for p in artifacts if p.is_file()])
