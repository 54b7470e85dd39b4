#!/usr/bin/env bash
# GPU check: one command on a CUDA machine without internet, datasets or the project's venv, sized for a
# lent GPU (15 minutes in all, start-up included, no second chance): its worst case, set-up included, stays
# under 9 minutes. The most valuable figures come first; each stage has its own time limit, writes its JSON
# as soon as it has something (the bench after every configuration), and a stage cut short loses only itself.
#   0. set-up: .venv/bin/python if there is one; else the machine's python3 (torch >= 2.11 with CUDA)
#      plus the wheels of `make wheels` (.whl/: this project and the pure-Python pins it lacks),
#      installed into a temporary folder (no network, nothing outside it changed);
#   1. the Fig. 4 bench in float32 (the reference's precision), then in bf16, on synthetic CIFAR-shaped data:
#      spiking_resnet18 <- cifar_resnet18, T in {1, 2, 4, 8}, batch 128, the spike pass compiled (Triton),
#      BPTT's LIF on the fastest spikingjelly kernels that pass the equality check (lif_backend);
#   2. a 50-step `hybrid` training throughput run at T=4, batch 128, compiled spike pass, float32;
#   3. the tests that have CUDA variants;
#   4. two float32 training steps of every distinct training set-up of the full plan, at full size, on
#      random inputs of each dataset's shape.
# Results (JSON, with the device name) go to OUT_DIR (default book/data/gpu/) -- commit them: CPU
# machines cannot redo them. Stage limits: 150 + 120 + 60 + 60 + 60 s.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (PY=... picks another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-book/data/gpu}
mkdir -p "$OUT"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
export PYTHONUNBUFFERED=1

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
  else
    PY=python3
    if ! ls .whl/*.whl >/dev/null 2>&1; then
      echo "no .venv and no wheels in .whl/: run 'make wheels' where the package registry is reachable and carry .whl/" >&2
      exit 2
    fi
    site=$(mktemp -d /tmp/hybridkd_site.XXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi

"$PY" - <<'PYEOF'
import torch
major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
assert (major, minor) >= (2, 11), f"torch {torch.__version__}: need >= 2.11"
assert torch.cuda.is_available(), "no CUDA device"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0))
PYEOF

# stage NAME SECONDS CMD...: run CMD for at most SECONDS; a stage cut short or failing is said and the next
# runs; the script exits 1 at the end if any stage did not finish
failed=()
stage() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  local rc=0
  timeout "$limit" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "== $name: cut short or failed (exit $rc); its JSON keeps what it finished" >&2
    failed+=("$name")
  fi
}

for precision in fp32 bf16; do
  limit=$([ "$precision" = fp32 ] && echo 150 || echo 120)
  stage "Fig. 4 bench, $precision" "$limit" "$PY" -m hybridkd_lib bench --device cuda --T 1 2 4 8 --batch-size 128 \
    --steps 5 --warmup 2 --methods bptt bptt_memopt bptt_kd ratebp kd hybrid --compile --precision "$precision" \
    --out "$OUT/bench_cuda_${precision}_$stamp.json"
done

stage "throughput" 60 "$PY" - "$OUT/throughput_cuda_$stamp.json" <<'PYEOF'
import json, sys
from hybridkd_lib.tools.efficiency import run_one
from hybridkd_lib.base.results import git_commit, write_json
rec = run_one("hybrid", 4, "spiking_resnet18", "cifar_resnet18", batch_size=128, input_size=32,
              device="cuda", steps=50, warmup=5, compile=True, precision="fp32")
rec.update(kind="throughput", steps=50, git_commit=git_commit(), target_images_per_s=4000,
           epoch_s_cifar10=round(50000 / rec["images_per_s"], 1),
           hours_300_epochs=round(300 * 50000 / rec["images_per_s"] / 3600, 2))
write_json(sys.argv[1], rec)
print(json.dumps(rec, indent=1))
PYEOF

stage "CUDA tests" 60 bash -o pipefail -c '"$0" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_ratebp.py \
  -k "cuda or single_lif or fp32" 2>&1 | tee "$1"' "$PY" "$OUT/pytest_cuda_$stamp.log"

stage "the full plan's set-ups" 60 "$PY" - "$OUT/setups_cuda_$stamp.json" <<'PYEOF'
import sys
from hybridkd_lib.book.plan import plan_setups
from hybridkd_lib.tools.efficiency import two_step_check
from hybridkd_lib.base.results import git_commit, write_json
records = []
for spec in plan_setups("full"):
    rec = two_step_check(spec, "cuda", batch_size=16 if spec["dataset"] == "imagenet" else 32)
    print(f"{rec['name']:<42} {rec['method']:<7} input {rec['input']} steps {rec['step_times_s']} s, "
          f"peak {rec['peak_mem_mb']:.0f} MB, finite {rec['finite']}")
    records.append(rec)
    write_json(sys.argv[1], {"kind": "full_plan_setups", "git_commit": git_commit(), "records": records})
assert all(r["finite"] for r in records), "a non-finite loss"
PYEOF
echo "wrote $OUT"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "stages not finished: ${failed[*]}" >&2
  exit 1
fi
