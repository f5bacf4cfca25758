#!/usr/bin/env bash
# The GPU check of "train anywhere", one script under 8 minutes on a datacenter GPU:
# versions and GPU name, the GPU-marked tests, then benchmarks/gpu_check.py's figures.
#   bash benchmarks/gpu_check.sh        (after `make install`; needs a CUDA build of torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.get_device_name())"
$PY -m pytest -q tests/training/test_distributed.py -k "gpu or device or bf16"
timeout 420 $PY benchmarks/gpu_check.py --seeds 3
