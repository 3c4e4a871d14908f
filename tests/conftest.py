import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never reach a hub, and run the same on any machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _session_cache() -> None:
    """A cache folder of this test session's own: the tokenized data caches that training writes start
    empty every session (a cache left by an earlier session or code version is never reused), while the
    embedded model and other converted files of the user's cache are linked in, not converted again."""
    user = Path(os.environ.get("SFTKIT_CACHE") or Path.home() / ".cache" / "sftkit")
    session = Path(tempfile.mkdtemp(prefix="sftkit-test-cache-"))
    atexit.register(shutil.rmtree, session, ignore_errors=True)
    if user.is_dir():
        for entry in user.iterdir():
            if entry.name != "tokenized" and not entry.name.startswith("."):
                (session / entry.name).symlink_to(entry)
    os.environ["SFTKIT_CACHE"] = str(session)


_session_cache()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Directory of a tiny random Llama-style model with its tokenizer."""
    from tests.tiny_models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), "llama"))


@pytest.fixture(scope="session")
def tiny_neox(tmp_path_factory):
    """Directory of a tiny random GPT-NeoX-style model with its tokenizer."""
    from tests.tiny_models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny_neox"), "gpt_neox"))


@pytest.fixture(scope="session")
def toy_policy(tiny_llama, tmp_path_factory) -> str:
    """The tiny Llama fine-tuned to answer France/two words and stop at <human>: (tests/train/toy_rollouts.py),
    the policy of the online-stage tests."""
    import torch

    from tests.train.toy_rollouts import build_policy

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared machine: more threads only wait on each other
    try:
        return build_policy(tiny_llama, tmp_path_factory.mktemp("toy_policy"))
    finally:
        torch.set_num_threads(threads)
