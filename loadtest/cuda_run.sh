#!/usr/bin/env bash
# The CUDA path of the engine benchmarks, once, on a GPU machine (docs/benchmarks.md "CUDA").
#
#   loadtest/cuda_run.sh engine    # smoke check of every CUDA backend, then the closed loop
#   loadtest/cuda_run.sh quality   # the trained model's quality on CUDA, then a short open loop
#
# Each step has its own time bound, so one that fails or hangs leaves the others their time;
# every step's output is also written to $OUT/<step>.txt (OUT defaults to .cache/cuda-run).
# Uses the machine's python3 (PyTorch with CUDA); bitsandbytes may come from $BNB_SITE.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-.cache/cuda-run}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -n "${BNB_SITE:-}" ]; then export PYTHONPATH="$BNB_SITE${PYTHONPATH:+:$PYTHONPATH}"; fi
PY=${PYTHON:-python3}

step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name, at most $limit s ($(date -u +%T))"
    timeout "$limit" "$@" 2>&1 | grep -v -e '^Loading weights' -e 'Writing model shards' \
        -e 'tie_word_embeddings' | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]} ($(date -u +%T))"
}

about() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c 'import torch, transformers, peft, bitsandbytes, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "transformers", transformers.__version__, "peft", peft.__version__,
      "bitsandbytes", bitsandbytes.__version__, torch.cuda.get_device_name(0))'
    lscpu | grep -m1 'Model name'
}

case "${1:-engine}" in
engine)
    about 2>&1 | tee "$OUT/about.txt"
    step check 150 "$PY" loadtest/cuda_check.py --device cuda --backends bnb-int8,bf16,none
    step closed 270 "$PY" loadtest/bench_engine.py --device cuda --backends bnb-int8,bf16,none \
        --no-ct2 --no-baseline --concurrency 1,4,16,32 --repeat 1
    ;;
quality)
    about 2>&1 | tee "$OUT/about.txt"
    step quality 200 "$PY" loadtest/bench_quality.py --device cuda --backends bnb-int8,bf16 \
        --examples 128 --train-minutes 2 --threads 8
    step open 150 "$PY" loadtest/bench_engine.py --device cuda --mode open --open-backend bf16 \
        --no-ct2 --no-baseline --duration 20 --capacity-seconds 10 --loads 0.9
    ;;
*) echo "usage: $0 engine|quality" >&2; exit 2 ;;
esac
