"""Benchmark: detox → chop → grade locally (1 process, 2 processes) and on a 2-node local Ray cluster.

    .venv/bin/python bench/bench_ray.py [--rows=200000] [--shards=2]

One generated input of ``--rows`` conversations (bench_data.build_input: the bundled sample, each
question made unique) is converted once; each configuration then runs detox, chop and grade on a
copy of that download in this process, and the table gives seconds and rows/s per stage. The
BASELINE is the local executor with one process. The Ray cluster is started here (``ray start``
head + one worker node, 1 CPU each, as the tests do) and always stopped at the end; the Ray run
uses ``--shards`` shards. "Ray overhead" is the stage's wall time minus its slowest shard's own
compute time (per shard phase) (task scheduling, worker start-up, imports, result transfer): what Ray adds on top of
the work. All configurations must write byte-identical grade parts' rows (checked).
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RAY = str(Path(sys.executable).with_name("ray"))
STAGES = ("detox", "chop", "grade")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster(temp_dir: str) -> str:
    port = free_port()
    common = ["--num-cpus=1", "--object-store-memory=200000000", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--include-dashboard=false", f"--temp-dir={temp_dir}", *common], check=True, capture_output=True)
    subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], check=True, capture_output=True)
    return f"127.0.0.1:{port}"


def timed_ray_executor(cfg, shard_seconds: list):
    """The Ray executor, recording each finished shard's own compute time."""
    from sftkit.data.pipeline import run_shard_phase
    from sftkit.data.run.executors import RayExecutor

    class Timed(RayExecutor):
        def run_shards(self, jobs, inputs):
            shard_seconds.append([])  # one list per shard phase
            for index, result in super().run_shards(jobs, inputs):
                shard_seconds[-1].append(result["seconds"])
                yield index, result

    return Timed(cfg, run_shard_phase)


def run_config(name: str, cfg, executor=None) -> dict:
    from sftkit.data.pipeline import STAGES as DEFINED
    from sftkit.data.pipeline import run_shard_phase
    from sftkit.data.run.executors import LocalExecutor
    from sftkit.data.run.runner import run_stage

    results = {}
    for stage in STAGES:
        shard_seconds: list[list[float]] = []
        stage_executor = executor(cfg, shard_seconds) if executor else LocalExecutor(run_shard_phase)
        start = time.perf_counter()
        stats = run_stage(DEFINED[stage], cfg, stage_executor)
        seconds = time.perf_counter() - start
        results[stage] = {"seconds": seconds, "rows": stats.rows_in,
                          "overhead": seconds - sum(max(p) for p in shard_seconds) if executor else None}
    return results


def rows_of(work: Path) -> list:
    import pyarrow.parquet as pq

    rows = []
    for part in sorted((work / "4_grade").glob("part-*.parquet")):
        rows += pq.read_table(part, columns=["id", "text"]).to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()

    from bench.bench_data import build_input
    from sftkit.data.config import DataConfig
    from sftkit.data.pipeline import run

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    ray_temp = tempfile.mkdtemp(prefix="br", dir="/tmp")
    try:
        source = tmp / "source"
        source.mkdir()
        build_input(source / "unified_bench.jsonl.gz", args.rows)
        base = DataConfig(work_dir=str(tmp / "download"), source=str(source), workers=1)
        run("download", base)
        configs = [("local, 1 process (BASELINE)", {"workers": 1}, None),
                   ("local, 2 processes", {"workers": 2}, None)]
        address = start_cluster(ray_temp)
        configs.append((f"ray, 2 nodes x 1 CPU, {args.shards} shards",
                        {"executor": "ray", "ray_address": address, "num_shards": args.shards}, timed_ray_executor))
        table, reference = {}, None
        for name, overrides, executor in configs:
            work = tmp / f"work-{len(table)}"
            shutil.copytree(tmp / "download" / "1_download", work / "1_download")
            cfg = DataConfig(**{**vars(base), "work_dir": str(work), **overrides})
            print(f"== {name}", flush=True)
            table[name] = run_config(name, cfg, executor)
            rows = rows_of(work)
            assert reference is None or rows == reference, f"{name}: different rows than the baseline"
            reference = rows
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()  # disconnect first, or the driver reports the stopped raylets
        subprocess.run([RAY, "stop", "--force"], capture_output=True)
        shutil.rmtree(ray_temp, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    baseline = table[next(iter(table))]
    rows_in = ", ".join(f"{s} {baseline[s]['rows']:,}" for s in STAGES)
    print(f"\ndetox -> chop -> grade on {args.rows:,} generated conversations (rows in per stage: {rows_in})\n")
    print("| configuration | stage | seconds | rows/s | vs baseline | Ray overhead (s) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, stages in table.items():
        for stage in (*STAGES, "total"):
            if stage == "total":
                seconds = sum(stages[s]["seconds"] for s in STAGES)
                base_seconds = sum(baseline[s]["seconds"] for s in STAGES)
                rows, overheads = baseline["detox"]["rows"], [stages[s]["overhead"] for s in STAGES]
                overhead = sum(overheads) if None not in overheads else None
            else:
                seconds, base_seconds = stages[stage]["seconds"], baseline[stage]["seconds"]
                rows, overhead = stages[stage]["rows"], stages[stage]["overhead"]
            print(f"| {name} | {stage} | {seconds:.1f} | {rows / seconds:,.0f} | {base_seconds / seconds:.2f}x | "
                  f"{'-' if overhead is None else f'{overhead:.1f}'} |")


if __name__ == "__main__":
    main()
