"""The ``raycl`` parser: building it imports no command's implementation; parsing a
``raycl bench`` command imports that benchmark and hands back its ``main``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from raycl.cli import build_parser
from raycl.cli_bench import BENCHES, GPU_STAGES

REPO = Path(__file__).resolve().parents[1]


def _python(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_building_the_parser_imports_no_torch_ray_pandas_or_benchmark():
    loaded = _python(
        "-c",
        "import sys; from raycl.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch','ray','pandas') "
        "or m.startswith('raycl.bench')))",
    )
    assert loaded == "[]"


@pytest.mark.parametrize("name", list(BENCHES))
def test_a_parsed_bench_runs_its_modules_main(name):
    positionals = {
        "search": ["landscape.parquet"],
        "fcnet": ["naval_propulsion"],
        "synthetic": ["ridge"],
    }
    args = build_parser().parse_args(["bench", name, *positionals.get(name, [])])
    assert args.run is importlib.import_module(BENCHES[name].module).main


def test_the_gpu_stages_offered_are_the_gpu_benchmarks_stages():
    from raycl.bench import gpu

    assert GPU_STAGES == gpu.STAGES


def test_the_gpu_benchmark_runs_alone_with_the_same_options():
    usage = _python("-m", "raycl.bench.gpu", "--help")
    assert "--stages {correctness,loss,train,collectives}" in usage
