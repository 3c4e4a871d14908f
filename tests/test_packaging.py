"""The package installs: a wheel built from the repository, installed into a fresh virtual environment.

The venv sees the project venv's packages (through a ``.pth`` line), so nothing is downloaded;
the wheel is built from a copy of the tracked files, so no build output lands in the repository.
Because that install borrows the packages, a separate test resolves the wheel's own declared
requirements against the package index (metadata only, nothing installed).
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ("sftkit-data", "sftkit-finetune", "sftkit-generate")

pytestmark = [pytest.mark.slow]


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the sftkit wheel installed; returns its bin/ directory."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    tracked = run(["git", "ls-files", "-z"], cwd=REPO).stdout.split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", root / "dist", source])
    (wheel,) = (root / "dist").glob("sftkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("sftkit/cli.py", "sftkit/data/pipeline.py", "sftkit/train/loop.py", "sftkit/train/run_record.py"):
        assert module in names, f"{module} missing from {wheel.name}"
    run([sys.executable, "-m", "venv", root / "venv"])
    bin_dir = root / "venv" / "bin"
    # The dependencies come from this interpreter's environment (itself a venv, so --system-site-packages
    # would reach only the base Python): a .pth line appends its site-packages after the venv's own.
    venv_site = run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout
    Path(venv_site.strip(), "project_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel])
    return bin_dir


def clean_env() -> dict:
    """No PYTHONPATH pointing back at the repository: the installed copy must stand alone."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_script_help(installed, script, tmp_path):
    out = run([installed / script, "--help"], cwd=tmp_path, env=clean_env()).stdout
    assert "--" in out and "usage:" in out
    where = run([installed / "python", "-c", "import sftkit; print(sftkit.__file__)"], cwd=tmp_path,
                env=clean_env()).stdout
    assert str(REPO) not in where and "site-packages" in where


def test_installed_finetune_trains_outside_the_repository(installed, tiny_llama, tmp_path):
    from tests.train.helpers import write_rows

    data = write_rows(tmp_path / "rows.json")
    run([installed / "sftkit-finetune", f"--base_model={tiny_llama}", f"--data_path={data}", "--output_dir=out",
         "--max_steps=1", "--batch_size=2", "--micro_batch_size=2", "--cutoff_len=64", "--report_to=none",
         "--val_set_size=0"], cwd=tmp_path, env=clean_env())
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["step"] == 1


def test_installed_finetune_without_data_path_says_what_to_give(installed, tmp_path):
    done = subprocess.run([installed / "sftkit-finetune", "--output_dir=out"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--data_path" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_declared_requirements_resolve_from_the_index(installed, tmp_path):
    """The wheel's requirements, as a user's ``pip install`` sees them, resolve together from the package
    index with torch pinned to the version this suite runs: a pin that was never released, or two pins
    that conflict, fail here (the --no-deps install above cannot see them). Needs the index, not a hub."""
    (wheel,) = (installed.parents[1] / "dist").glob("sftkit-*.whl")
    archive = zipfile.ZipFile(wheel)
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    declared = [Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    assert {r.name for r in declared} >= {"torch", "transformers", "peft", "datasets", "pyarrow"}
    torch_version = Version(torch.__version__).base_version  # 2.13.0+cpu -> 2.13.0: the index's build of it
    report = tmp_path / "report.json"
    run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", report,
         wheel, f"torch=={torch_version}"])
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): Version(item["metadata"]["version"])
                for item in json.loads(report.read_text())["install"]}
    for requirement in declared:
        name = requirement.name.lower().replace("_", "-")
        assert name in resolved, f"{requirement} was not resolved"
        assert requirement.specifier.contains(resolved[name], prereleases=True), f"{requirement}: got {resolved[name]}"
    assert resolved["torch"].base_version == torch_version
