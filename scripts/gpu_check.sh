#!/usr/bin/env bash
# GPU check: the GPU tests and both benchmarks on one CUDA device, with random weights at the real shapes (no
# network, nothing downloaded), in under 8 minutes on one data-centre GPU. Everything goes to one folder:
#   bash scripts/gpu_check.sh [OUT_DIR]      (default: gpu-check/)
# device.txt (GPU name, driver, torch/CUDA versions), tests.txt, select.txt/.json, prefill-*.txt/.json.
# CHECK_DEVICE=cpu CHECK_QUICK=1 runs the same steps on the CPU at tiny shapes (how the test suite checks this script).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py="${PYTHON:-python}"
dev="${CHECK_DEVICE:-cuda}"
if [ "${CHECK_QUICK:-0}" = 1 ]; then  # tiny shapes: the script's plumbing, not the numbers
  sel_shape=(--n 60 --k 8 --dim 32 --repeats 1) lm_shape=(--layers 1 --hidden 64 --heads 4 --ffn 128 --repeats 1)
else
  sel_shape=(--n 576 2880 --k 64 320 --repeats 5) lm_shape=(--layers 32 --repeats 10)
fi

{
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA DEVICE')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
} > "$out/device.txt" 2>&1
cat "$out/device.txt"
if [ "$dev" = cuda ] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: nothing to check" | tee -a "$out/device.txt"
  exit 1
fi

status=0
run() {  # run NAME SECONDS CMD...: output to $out/NAME.txt, exit status appended
  local name=$1 secs=$2
  shift 2
  echo "== $name (at most ${secs}s)"
  timeout "$secs" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  echo "exit status: $rc" >> "$out/$name.txt"
  tail -n 25 "$out/$name.txt"
  [ "$rc" -eq 0 ] || status=1
}

# the tests that use the GPU (they skip without CUDA elsewhere), then the device and batch tests as a whole
run tests 150 "$py" -m pytest -q -p no:cacheprovider tests/test_batch.py tests/test_pipeline.py -k "gpu or cuda or device or batch"
# selection on the device: ratios to one linear layer, the floors, batched vs looped (B = 16)
run select 120 "$py" -m resprune.bench select --device "$dev" --dtype float16 "${sel_shape[@]}" \
  --batch 16 --methods resprune residual divprune cdpruner random --json "$out/select.json"
# pruned vs unpruned prefill, all 32 layers of LLaVA-1.5-7B's LM shape in float16: 576 visual tokens, then 2916
run prefill-llava 120 "$py" -m resprune.bench prefill --device "$dev" --dtype float16 "${lm_shape[@]}" \
  --keep 576 192 128 64 --json "$out/prefill-llava.json"
run prefill-next 120 "$py" -m resprune.bench prefill --device "$dev" --dtype float16 "${lm_shape[@]}" \
  --image-size 756 --keep 2916 640 320 160 --json "$out/prefill-next.json"
echo "results in $out/ (status $status)"
exit $status
