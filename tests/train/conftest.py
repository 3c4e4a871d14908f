"""Fixtures of the training tests: the toy policy of the online stages, built once per session."""
import pytest


@pytest.fixture(scope="session")
def toy_policy(tiny_llama, tmp_path_factory) -> str:
    """The tiny Llama fine-tuned to answer France/two words and stop at <human>: (tests/train/toy_rollouts.py)."""
    import torch

    from tests.train.toy_rollouts import build_policy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared machine: more threads only wait on each other
    try:
        return build_policy(tiny_llama, tmp_path_factory.mktemp("toy_policy"))
    finally:
        torch.set_num_threads(threads)
