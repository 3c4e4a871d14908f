from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_detoxify(tmp_path_factory):
    """(checkpoint, config_dir) of a tiny detoxify-format model."""
    from tests.data.tiny_scorers import build_detoxify_checkpoint

    return build_detoxify_checkpoint(tmp_path_factory.mktemp("tiny_detoxify"))


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory):
    """Directory of a tiny sequence-classification reward model."""
    from tests.data.tiny_scorers import build_reward_model

    return build_reward_model(tmp_path_factory.mktemp("tiny_reward"))


SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def sample_config(work_dir, **overrides):
    from sftkit.data.config import DataConfig

    return DataConfig(**{"work_dir": str(work_dir), "source": str(SAMPLE), "workers": 1, **overrides})


@pytest.fixture(scope="session")
def sample_work(tmp_path_factory):
    """A work dir with every stage run on the bundled sample (copy it before changing anything)."""
    from sftkit.data.pipeline import run

    work_dir = tmp_path_factory.mktemp("sample_work")
    run("all", sample_config(work_dir))
    return work_dir
