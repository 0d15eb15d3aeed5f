"""benchmarks/gpu_check.sh, the script a lent GPU runs, checked end to end on the CPU at tiny sizes.

No GPU is lent to CI, so the script's own logic (its steps, the arguments it passes, the projection it prints)
is exercised here with GPU_CHECK_DEVICE=cpu and GPU_CHECK_TINY=1; on a GPU only the sizes and the device change.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_on_a_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "gpu_check"
    environment = dict(os.environ, GPU_CHECK_DEVICE="cpu", GPU_CHECK_TINY="1", GPU_CHECK_SLICE_S="3",
                       GPU_CHECK_RUN="", OUT=str(out), CS336_CACHE=str(tmp_path / "cache"),
                       PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    finished = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=environment,
                              capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    log = (out / "gpu_check.log").read_text()
    for section in ("1. machine", "2. tests on cpu", "3. ATen operations", "4. training speed", "5. a 3 s slice",
                    "done"):
        assert f"=== {section}" in log
    assert "passed" in log and "failed" not in log
    assert "ours, cuda policy" in (out / "ops_per_step.txt").read_text()
    assert "tiny" in (out / "lm_benchmark.txt").read_text()
    projection = (out / "projection.txt").read_text()
    assert "steady state:" in projection and "projected for tinystories_cpu's 2,097,152 tokens:" in projection
    assert (out / "course_slice" / "samples.txt").is_file()
