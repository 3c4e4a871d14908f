"""kill -9 of the data stages at their dangerous points; the rerun must match an uninterrupted run.

Points: mid-transfer (download), mid-batch (detox, grade with the tiny reward model), and between a
step's output rename and its manifest write. With an input or a setting changed in between, the
rerun must start over and match an uninterrupted run of the changed input or setting.
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.data.conftest import tiny_reward_model  # noqa: F401  (fixture)
from tests.data.range_server import RangeServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
KILL_AT = str(Path(__file__).with_name("kill_at.py"))
STAGE_DIRS = ("1_download", "2_detox", "3_chop", "4_grade")
SERVED = "--files=unified_sample_dialog.jsonl,unified_sample_instructions.jsonl"


def create_data(*args, kill_at: tuple[str, int] | None = None, wait=True):
    prefix = [KILL_AT, kill_at[0], str(kill_at[1])] if kill_at else ["create_data.py"]
    command = [sys.executable, *prefix, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def killed(result) -> bool:
    return result.returncode == -signal.SIGKILL


def outputs(work: Path, stages=STAGE_DIRS) -> dict[str, bytes]:
    """Every output of these stages (parquet parts and rejects lists), by relative path."""
    found = {}
    for stage in stages:
        for path in sorted((work / stage).rglob("*")):
            if path.is_file() and "reward_cache" not in path.parts and path.suffix in (".parquet", ".jsonl"):
                found[str(path.relative_to(work))] = path.read_bytes()
    return found


def assert_same(a: Path, b: Path, stages=STAGE_DIRS) -> None:
    left, right = outputs(a, stages), outputs(b, stages)
    assert left.keys() == right.keys() and left, sorted(left.keys() ^ right.keys())
    for name in left:
        assert left[name] == right[name], name


@pytest.fixture(scope="module")
def reward_args(tiny_reward_model):
    return ["--source=data/sample", "--batch_rows=64", "--workers=1", "--use_reward_model=True",
            f"--reward_model={tiny_reward_model}", "--local_files_only=True", "--device=cpu",
            "--reward_progress_rows=40", "--reward_threshold=0.5"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, reward_args):
    """An uninterrupted run of every stage."""
    work = tmp_path_factory.mktemp("reference")
    result = create_data("all", f"--work_dir={work}", *reward_args)
    assert result.returncode == 0, result.stderr
    return work


def with_stages(reference: Path, target: Path, stages) -> Path:
    for stage in stages:
        shutil.copytree(reference / stage, target / stage)
    return target


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The sample as two plain JSONL files (~170 kB each), so a throttled transfer takes seconds."""
    import gzip

    directory = tmp_path_factory.mktemp("served")
    for path in SAMPLE.glob("*.jsonl.gz"):
        (directory / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    return directory


def download_mid_transfer(server: RangeServer, work: Path) -> None:
    """Start a download and kill -9 it once a partial file has bytes on disk."""
    process = create_data("download", f"--source={server.url}", SERVED, f"--work_dir={work}", wait=False)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size for p in (work / "raw").glob("*.part")) if (work / "raw").is_dir() else True:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no partial download appeared"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def test_download_killed_mid_transfer_resumes_to_identical_bytes(served, tmp_path):
    with RangeServer(served) as server:
        whole = create_data("download", f"--source={server.url}", SERVED, f"--work_dir={tmp_path / 'whole'}")
        assert whole.returncode == 0, whole.stderr
        server.bytes_per_s = 60_000
        download_mid_transfer(server, tmp_path / "cut")
        server.bytes_per_s = None
        again = create_data("download", f"--source={server.url}", SERVED, f"--work_dir={tmp_path / 'cut'}")
    assert again.returncode == 0, again.stderr
    assert_same(tmp_path / "whole", tmp_path / "cut", ["1_download"])
    for raw in (tmp_path / "whole" / "raw").iterdir():
        assert (tmp_path / "cut" / "raw" / raw.name).read_bytes() == raw.read_bytes()
    resumed = [(r, v) for r, v in zip(server.requests, server.if_range) if r[2] == 206]
    assert resumed and all(v and v.startswith('"') for _, v in resumed)  # resumed with If-Range: <ETag>


def test_download_of_a_file_changed_after_the_kill_starts_over(served, tmp_path):
    with RangeServer(served) as server:
        server.bytes_per_s = 60_000
        download_mid_transfer(server, tmp_path / "cut")
        server.bytes_per_s = None
        for path in served.iterdir():  # same size, other content: a bare Range request would splice
            path.write_bytes(path.read_bytes().replace(b"the", b"THE"))
        try:
            again = create_data("download", f"--source={server.url}", SERVED, f"--work_dir={tmp_path / 'cut'}")
            whole = create_data("download", f"--source={server.url}", SERVED, f"--work_dir={tmp_path / 'whole'}")
        finally:
            for path in served.iterdir():
                path.write_bytes(path.read_bytes().replace(b"THE", b"the"))
    assert again.returncode == 0 and whole.returncode == 0, again.stderr + whole.stderr
    assert "remote file changed" in again.stdout
    assert_same(tmp_path / "whole", tmp_path / "cut", ["1_download"])


@pytest.mark.parametrize("kill_at", [("sftkit.data.stages.detox:profanity_probs", 3),  # mid-batch
                                     ("sftkit.data.run.manifest:write_manifest", 1),  # score renamed, no manifest
                                     ("sftkit.data.run.manifest:write_manifest", 2)])  # filter renamed, no manifest
def test_detox_killed_reruns_to_identical_bytes(reference, reward_args, tmp_path, kill_at):
    work = with_stages(reference, tmp_path, ["1_download"])
    assert killed(create_data("detox", f"--work_dir={work}", *reward_args, kill_at=kill_at))
    again = create_data("detox", f"--work_dir={work}", *reward_args)
    assert again.returncode == 0, again.stderr
    assert_same(reference, work, ["1_download", "2_detox"])


@pytest.mark.parametrize("kill_at", [("sftkit.reward:RewardModelScorer.score", 3),  # mid reward batch
                                     ("sftkit.data.run.manifest:write_manifest", 2)])  # filter renamed, no manifest
def test_grade_killed_reruns_to_identical_bytes(reference, reward_args, tmp_path, kill_at):
    work = with_stages(reference, tmp_path, ["1_download", "2_detox", "3_chop"])
    assert killed(create_data("grade", f"--work_dir={work}", *reward_args, kill_at=kill_at))
    again = create_data("grade", f"--work_dir={work}", *reward_args)
    assert again.returncode == 0, again.stderr
    if "score" in kill_at[0]:
        assert "; 80 of them were already scored" in again.stdout  # two units survived the kill
    assert_same(reference, work, STAGE_DIRS)


def test_a_setting_changed_after_a_kill_gives_the_new_settings_result(reference, reward_args, tmp_path):
    work = with_stages(reference, tmp_path / "cut", ["1_download"])
    assert killed(create_data("detox", f"--work_dir={work}", *reward_args,
                              kill_at=("sftkit.data.run.manifest:write_manifest", 2)))
    changed = [*reward_args, "--profanity_threshold=0.6", "--max_row_chars=1500"]
    again = create_data("detox", f"--work_dir={work}", *changed)
    assert again.returncode == 0, again.stderr
    assert "running again" in again.stdout
    fresh = with_stages(reference, tmp_path / "fresh", ["1_download"])
    assert create_data("detox", f"--work_dir={fresh}", *changed).returncode == 0
    assert_same(fresh, work, ["2_detox"])
    assert outputs(work, ["2_detox"]) != outputs(reference, ["2_detox"])


def test_an_input_changed_after_a_kill_gives_the_new_inputs_result(reference, reward_args, tmp_path):
    import gzip

    source = tmp_path / "source"
    source.mkdir()
    for path in SAMPLE.glob("*.jsonl.gz"):
        shutil.copy(path, source / path.name)
    args = [a if not a.startswith("--source=") else f"--source={source}" for a in reward_args]
    work = tmp_path / "cut"
    assert create_data("download", f"--work_dir={work}", *args).returncode == 0
    assert killed(create_data("detox", f"--work_dir={work}", *args,
                              kill_at=("sftkit.data.stages.detox:profanity_probs", 3)))
    first = sorted(source.glob("*.gz"))[0]
    lines = gzip.decompress(first.read_bytes()).splitlines(keepends=True)
    first.write_bytes(gzip.compress(b"".join(lines[: len(lines) // 2]), mtime=0))  # the input changes
    for stage in ("download", "detox"):
        again = create_data(stage, f"--work_dir={work}", *args)
        assert again.returncode == 0, again.stderr
        assert "running again" in again.stdout
    fresh = tmp_path / "fresh"
    for stage in ("download", "detox"):
        assert create_data(stage, f"--work_dir={fresh}", *args).returncode == 0
    assert_same(fresh, work, ["1_download", "2_detox"])
