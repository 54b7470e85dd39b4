#!/usr/bin/env bash
# GPU check: one command on a CUDA machine without internet or datasets.
#   1. the tests that have CUDA variants,
#   2. the Fig. 4 bench on synthetic CIFAR-shaped data, spiking_resnet18 <- cifar_resnet18,
#      T in {1, 2, 4, 8}, every method,
#   3. a 200-step `hybrid` training throughput run at T=4, batch 128.
# Results (JSON, with the device name) go to book/data/gpu/ -- commit them: CPU machines cannot redo them.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (set PY to use another interpreter than .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-book/data/gpu}
mkdir -p "$OUT"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
export PYTHONUNBUFFERED=1

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
"$PY" -m pytest -q tests/test_cuda.py tests/test_ratebp.py -k "cuda or single_lif" 2>&1 | tee "$OUT/pytest_cuda_$stamp.log"

"$PY" -m hybridkd_lib bench --device cuda --T 1 2 4 8 --batch-size 128 --steps 20 --warmup 5 \
  --methods forward_only bptt bptt_ckpt bptt_kd ratebp kd hybrid --out "$OUT/bench_cuda_$stamp.json"

"$PY" - "$OUT/throughput_cuda_$stamp.json" <<'PYEOF'
import json, sys
from hybridkd_lib.efficiency import run_one
from hybridkd_lib.results import git_commit, write_json
rec = run_one("hybrid", 4, "spiking_resnet18", "cifar_resnet18", batch_size=128, input_size=32,
              device="cuda", steps=200, warmup=10)
rec.update(kind="throughput", steps=200, git_commit=git_commit(),
           epoch_s_cifar10=round(50000 / rec["images_per_s"], 1),
           hours_300_epochs=round(300 * 50000 / rec["images_per_s"] / 3600, 2))
write_json(sys.argv[1], rec)
print(json.dumps(rec, indent=1))
PYEOF
echo "wrote $OUT"
