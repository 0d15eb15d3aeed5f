#!/usr/bin/env bash
# The GPU check: one short script for a lent GPU (under 8 minutes on one H100/H200/B200), run from the repository
# root after `uv sync`. What it measures, in order:
#
#   1. the machine: GPU, driver, torch and CUDA versions
#   2. the tests that run on the GPU when there is one (tests/test_device_paths.py: kernels against torch's,
#      training on the device) and the kernel-policy, compile and activation-checkpointing tests
#   3. ATen operations per forward+backward of the course model, CPU and CUDA chunking policies against the
#      built-ins (benchmarks/ops_per_step.py)
#   4. the course model (d_model 512, 4 layers, 16 heads, context 256) at the course batch of 128: training
#      tokens/s, MFU and peak memory, ours against the built-ins anchor (../shared/bench/torch_reference_lm.py),
#      bf16 with and without torch.compile (benchmarks/lm_benchmark.py)
#   5. a slice of the real course run: `cs336-train pipeline` with the course config on the bundled TinyStories
#      sample for GPU_CHECK_SLICE_S seconds of training, and the time it projects for the course's full token budget
#
# Everything it prints is also saved under $OUT (default runs/gpu_check), ready to paste into BENCHMARKS.md.
#
# Environment: GPU_CHECK_DEVICE (default cuda), GPU_CHECK_SLICE_S (default 120), GPU_CHECK_TINY=1 (tiny sizes, to
# check the script's own logic on a CPU in about a minute: tests/test_gpu_check_script.py does exactly that).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SLICE_S="${GPU_CHECK_SLICE_S:-120}"
TINY="${GPU_CHECK_TINY:-0}"
OUT="${OUT:-runs/gpu_check}"
RUN="${GPU_CHECK_RUN:-uv run}"   # the tests call it with the current interpreter's environment
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
section() { printf '\n=== %s (%s s since start)\n' "$1" "$SECONDS"; }

section "1. machine"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
$RUN python -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| available',
torch.cuda.is_available(), '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

if [ "$TINY" = "1" ]; then
  LM_ARGS=(--config tiny --settings fp32,bf16 --steps 2 --rounds 1)
  OPS_ARGS=(--batch 2 --d-model 64 --layers 2 --heads 4 --d-ff 176 --context 32 --vocab 512)
  CONFIG=tinystories_cpu
  PIPELINE_SETS=(--set model.vocab_size=300 --set model.d_model=64 --set model.num_layers=2 --set model.num_heads=4
                 --set model.d_ff=176 --set model.context_length=32 --set run.batch_size=4 --set run.steps=1000000
                 --set run.eval_interval=0 --set run.compile=false)
  TESTS=(tests/test_device_paths.py)
else
  LM_ARGS=(--config course --batch 128 --settings bf16,bf16+compile --steps 10 --rounds 2)
  OPS_ARGS=()
  CONFIG=tinystories_course
  PIPELINE_SETS=(--set run.eval_interval=0)
  TESTS=(tests/test_device_paths.py tests/test_nn_fused.py tests/test_nn_kernel_policy.py tests/test_nn_checkpointing.py)
fi

section "2. tests on $DEVICE"
CS336_TEST_DEVICE="$DEVICE" $RUN pytest -q -x "${TESTS[@]}"

section "3. ATen operations per forward+backward"
# ${ARRAY[@]+"${ARRAY[@]}"}: an empty array is no argument, also on bash < 4.4 under set -u
$RUN python benchmarks/ops_per_step.py ${OPS_ARGS[@]+"${OPS_ARGS[@]}"} | tee "$OUT/ops_per_step.txt"

section "4. training speed against the built-ins anchor"
$RUN python benchmarks/lm_benchmark.py --device "$DEVICE" "${LM_ARGS[@]}" | tee "$OUT/lm_benchmark.txt"

section "5. a ${SLICE_S} s slice of the course run"
rm -rf "$OUT/course_slice"
$RUN cs336-train pipeline --config "$CONFIG" --out "$OUT/course_slice" --set run.device="$DEVICE" \
    --set run.time_budget_s="$SLICE_S" "${PIPELINE_SETS[@]}" 2>&1 | grep -v '^training ' | tail -n 25
$RUN python - "$OUT/course_slice" "$CONFIG" <<'PYTHON' | tee "$OUT/projection.txt"
"""The course run's time from the slice: tokens per training second at the end of the slice (after warm-up and
compilation), applied to the course config's full budget of steps x batch x context tokens."""
import json
import sys
import tomllib
from pathlib import Path

from cs336_train.config_files import resolve_config

run_dir, config_name = Path(sys.argv[1]), sys.argv[2]
config = tomllib.loads(resolve_config(config_name).read_text())  # the full run, as the config file defines it
budget = config["run"]["steps"] * config["run"]["batch_size"] * config["model"]["context_length"]
train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
train = [record for record in train if record["kind"] == "train"]
steady = train[len(train) // 2:]  # the second half: compilation and warm-up are behind
tokens_per_s = sum(r["tokens_per_s"] for r in steady) / len(steady)
mfu = sum(r["mfu"] for r in steady) / len(steady)
print(f"slice: {train[-1]['step']:,} steps, {train[-1]['tokens']:,} tokens in {train[-1]['wall_s']:.0f} s of training")
print(f"steady state: {tokens_per_s:,.0f} tokens/s, MFU {mfu:.1%}")
print(f"projected for {config_name}'s {budget:,} tokens: {budget / tokens_per_s / 60:.1f} minutes of training "
      "(validation and checkpoints not included)")
PYTHON

section "done"
echo "saved: $OUT/gpu_check.log (and ops_per_step.txt, lm_benchmark.txt, projection.txt)"
