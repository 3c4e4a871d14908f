"""--executor=ray on a real two-node Ray cluster started here (both nodes on this machine, 1 CPU each).

The same stage code runs as Ray tasks; the outputs must be byte-identical to a local run, also after
a worker node dies mid-stage and after the driver is killed and relaunched (finished shards reused).
"""
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.data.range_server import RangeServer

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "data" / "sample"
RAY = str(Path(sys.executable).with_name("ray"))
FOUR = "--files=" + ",".join(f"unified_part{i}.jsonl" for i in range(4))
OUTPUTS = ["oig_instruct_cleaned.json", "oig_instruct_cleaned.card.json", "oig_instruct_cleaned.card.md"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_cmd(*args, temp_dir):
    subprocess.run([RAY, *args], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


@pytest.fixture(scope="module")
def cluster():
    """(address, temp dir) of a head node and one worker node; always stopped at the end."""
    temp_dir = tempfile.mkdtemp(prefix="sr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    common = ["--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
    try:
        ray_cmd("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                f"--temp-dir={temp_dir}", *common, temp_dir=temp_dir)
        ray_cmd("start", f"--address=127.0.0.1:{port}", *common, temp_dir=temp_dir)
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def create_data(*args, wait=True):
    command = [sys.executable, "create_data.py", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def summaries(stdout: str) -> list[str]:
    """Each stage's summary line without its timing."""
    return [re.sub(r" \(\d+\.\d+s\)$", "", line) for line in stdout.splitlines()
            if re.match(r"\[\w+\] rows in ", line)]


def assert_same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def wait_for(condition, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def four_files(tmp_path_factory):
    """The bundled sample as four plain JSONL files (one per download shard), for slow transfers."""
    directory = tmp_path_factory.mktemp("four")
    lines = [line for f in sorted(SAMPLE.glob("unified_*.gz"))  # the OIG files: one format in every part
             for line in gzip.open(f).read().splitlines(keepends=True)]
    for i in range(4):
        (directory / f"unified_part{i}.jsonl").write_bytes(b"".join(lines[i::4]))
    return directory


@pytest.fixture(scope="module")
def server(four_files):
    with RangeServer(four_files) as running:
        yield running


@pytest.fixture
def slow_server(server):
    """The same server (same URL, so the same data card), slow enough to kill things mid-transfer."""
    server.bytes_per_s = 40_000
    yield server
    server.bytes_per_s = None


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, server):
    """A local run over the four files served by HTTP: what every Ray run below must reproduce."""
    work = tmp_path_factory.mktemp("reference")
    result = create_data("all", f"--source={server.url}", FOUR, f"--work_dir={work}", "--retry_backoff_s=0.05")
    assert result.returncode == 0, result.stderr
    return work


def test_ray_run_of_the_sample_is_byte_identical_to_a_local_run(cluster, tmp_path):
    address, _ = cluster
    local = create_data("all", "--source=data/sample", f"--work_dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr
    on_ray = create_data("all", "--source=data/sample", f"--work_dir={tmp_path / 'ray'}", "--executor=ray",
                         f"--ray_address={address}", "--num_shards=4")
    assert on_ray.returncode == 0, on_ray.stderr
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")
    assert summaries(on_ray.stdout) == summaries(local.stdout) and len(summaries(local.stdout)) == 5
    assert len(list((tmp_path / "ray" / "4_grade").glob("part-*-of-00004.parquet"))) == 4


def test_a_killed_driver_is_relaunched_reusing_finished_shards(cluster, local_reference, slow_server, tmp_path):
    address, _ = cluster
    manifests, server = tmp_path / "1_download", slow_server
    args = ["all", f"--source={server.url}", FOUR, f"--work_dir={tmp_path}", "--executor=ray",
            f"--ray_address={address}", "--num_shards=4", "--retry_backoff_s=0.05"]
    driver = create_data(*args, wait=False)

    def finished():
        return [p for p in manifests.glob("*.manifest.json") if '"pending"' not in p.read_text()]

    wait_for(lambda: finished() or driver.poll() is not None, "a finished download shard")
    assert driver.poll() is None, driver.communicate()
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    done = len(finished())
    assert 1 <= done < 4
    again = create_data(*args)
    assert again.returncode == 0, again.stderr
    reused = re.search(r"\[download\] reused (\d) of 4 finished shard\(s\)", again.stdout)
    assert reused and int(reused.group(1)) >= done
    assert_same_outputs(local_reference, tmp_path)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def raylets(temp_dir: str) -> list[int]:
    """Raylet processes of this test's cluster (found by its temp dir, never another cluster's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            args = cmdline(int(entry.name))
            if args and args[0].endswith("raylet/raylet") and any(temp_dir in a for a in args):
                found.append(int(entry.name))
    return found


def test_reward_grading_on_ray_actors_matches_local_and_resumes(cluster, tiny_reward_model, tmp_path):
    address, _ = cluster
    common = ["all", "--source=data/sample", "--use_reward_model=True", f"--reward_model={tiny_reward_model}",
              "--local_files_only=True", "--device=cpu", "--reward_progress_rows=40", "--reward_threshold=0.5"]
    local = create_data(*common, f"--work_dir={tmp_path / 'local'}")
    assert local.returncode == 0, local.stderr
    ray_args = [*common, f"--work_dir={tmp_path / 'ray'}", "--executor=ray", f"--ray_address={address}",
                "--num_shards=4", "--grade_actors=2"]
    on_ray = create_data(*ray_args)
    assert on_ray.returncode == 0, on_ray.stderr
    assert_same_outputs(tmp_path / "local", tmp_path / "ray")
    card = json.loads((tmp_path / "ray" / OUTPUTS[1]).read_text())
    assert next(s for s in card["stages"] if s["stage"] == "grade")["dropped"]["reward_too_low"] > 0
    passing = re.search(r"\[grade/reward\] ([\d,]+) rows pass the text thresholds; 0 of them", on_ray.stdout)
    assert passing, on_ray.stdout
    units = list((tmp_path / "ray" / "4_grade" / "reward_cache").glob("*/unit-*.parquet"))
    assert len(units) == -(-int(passing.group(1).replace(",", "")) // 40)
    # a stricter threshold later re-uses every reward already computed: no actor scores anything
    stricter = create_data(*ray_args, "--reward_threshold=0.6")
    assert stricter.returncode == 0, stricter.stderr
    assert f"{passing.group(1)} rows pass the text thresholds; {passing.group(1)} of them were already" \
        in stricter.stdout


def test_a_failing_shard_names_its_index_input_and_error(cluster, tmp_path):
    address, _ = cluster
    source = tmp_path / "source"
    source.mkdir()
    for path in SAMPLE.glob("*.jsonl.gz"):
        shutil.copy(path, source / path.name)
    whole = (SAMPLE / "unified_sample_dialog.jsonl.gz").read_bytes()
    (source / "unified_sample_dialog.jsonl.gz").write_bytes(whole[: len(whole) // 2])  # truncated
    failed = create_data("download", f"--source={source}", f"--work_dir={tmp_path / 'work'}", "--executor=ray",
                         f"--ray_address={address}", "--num_shards=2", "--max_retries=1")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert re.search(r"shard 0 of 2 \(input: [^)]*unified_sample_dialog\.jsonl\.gz[^)]*\): input .*unified_sample_dialog"
                     r"\.jsonl\.gz: cannot read \(EOFError", failed.stderr), failed.stderr


# Last: it leaves the cluster with the head node only.
def test_losing_a_worker_node_mid_stage_still_completes_identically(cluster, local_reference, slow_server, tmp_path):
    address, temp_dir = cluster
    server = slow_server
    driver = create_data("all", f"--source={server.url}", FOUR, f"--work_dir={tmp_path}", "--executor=ray",
                         f"--ray_address={address}", "--num_shards=4", "--retry_backoff_s=0.05", wait=False)
    wait_for(lambda: len(list((tmp_path / "raw").glob("*.part"))) >= 2 or driver.poll() is not None,
             "two transfers in flight (one per node)")
    assert driver.poll() is None, driver.communicate()
    worker_raylet = [pid for pid in raylets(temp_dir) if "--head" not in cmdline(pid)]
    assert len(worker_raylet) == 1
    os.kill(worker_raylet[0], signal.SIGKILL)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    assert_same_outputs(local_reference, tmp_path)
