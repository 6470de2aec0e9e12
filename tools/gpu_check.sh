#!/usr/bin/env bash
# The checks that need an NVIDIA GPU: the GPU-only tests (CUDA graphs vs eager, FP16 vs FP32
# accuracy of the shipped model, TensorRT vs ONNX Runtime when tensorrt is installed) and the
# network benchmark on every GPU runtime the machine has.
# Runs with the python3 that has CUDA PyTorch (no venv, no ROS needed):
#   tools/gpu_check.sh [OUTPUT_DIR]      # logs and bench_gpu.json go to OUTPUT_DIR
set -uo pipefail
out=${1:-gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/gpu_check.log"
import onnxruntime, torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu',
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())
PY
status=0
python3 -m pytest -q -rs -s -p no:cacheprovider test/test_core_backends.py \
    test/test_core_backends_engine_cache.py 2>&1 | tee -a "$out/gpu_check.log" || status=1
python3 -m hand_pose_ros.cli.bench --device cuda --networks --no-pipeline \
    --json "$out/bench_gpu.json" 2>&1 | tee -a "$out/gpu_check.log" || status=1
exit $status
