#!/usr/bin/env bash
# The GPU check, in one call (`make gpu-check`): the CUDA tests, then `chatglm bench` on full-size random
# ChatGLM-6B weights in both CUDA modes beside the exact float16 baseline, and the int4 peak memory at a full
# 2048-token conversation. Made for a bare GPU machine without network that has torch (with CUDA), numpy,
# safetensors, sentencepiece, typer and rich: the pure-Python rest (pytest, platformdirs, ...) travels as wheels
# in gpu-wheels/ (`make gpu-wheels`), the test fixtures in gpu-shared/ (or wherever CHATGLM_SHARED points).
# Every step runs even when one fails; the exit status says whether all passed. Results go to $OUT if set.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "gpu-wheels/*.whl" >/dev/null; then
    SITE=$(mktemp -d)
    $PY -m pip install -q --no-index --no-deps --target "$SITE" gpu-wheels/*.whl >/dev/null 2>&1 \
        || echo "note: some wheels in gpu-wheels/ did not install"
    export PYTHONPATH="$PYTHONPATH:$SITE"  # after the machine's own packages
fi
[ -d gpu-shared ] && export CHATGLM_SHARED=${CHATGLM_SHARED:-$PWD/gpu-shared}
export CHATGLM_HOME="$OUT/home"
status=0
step() {  # step NAME TIMEOUT COMMAND...: run it, keep its output, remember a failure
    local name=$1 limit=$2; shift 2
    echo "=== $name"
    local start=$SECONDS
    timeout "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1 || { echo "!!! $name failed (exit $?)"; status=1; }
    echo "--- $name: $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
CHATGLM="$PY -c 'import sys; from chatglm_tui.cli import main; sys.argv[0] = \"chatglm\"; main()'"
bench() { step "$1" 180 bash -c "$CHATGLM bench --config 6b --json ${*:2} > $OUT/$1.json && $PY -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r[\"backend\"], \"| decode\", round(r[\"decode_tokens_per_s\"],1), \"tok/s, median\", round(r[\"decode_median_ms\"],2), \"ms | prefill\", round(r[\"prefill_tokens_per_s\"]), \"tok/s | GPU peak\", round(r[\"gpu_peak_bytes\"]/1e9,2), \"GB | bound\", round(r[\"decode_bound_tokens_per_s\"]), \"tok/s\")' $OUT/$1.json"; }
step tests 300 $PY -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/model/test_cuda.py
bench bench-int4-resident --device cuda --backend cuda-int4 --prompt-tokens 512 --new-tokens 128
bench bench-fp16-resident --device cuda --backend cuda-fp16 --prompt-tokens 512 --new-tokens 128
bench bench-int4-full-window --device cuda --backend cuda-int4 --prompt-tokens 1920 --new-tokens 128
step int4-fits-5.5GB 30 $PY -c 'import json, sys; peak = json.load(open(sys.argv[1]))["gpu_peak_bytes"]; print(f"int4-resident GPU peak at a full 2048-token window: {peak / 1e9:.2f} GB"); sys.exit(peak > 5.5e9)' "$OUT/bench-int4-full-window.json"
bench bench-baseline-exact-fp16 --device cuda --backend exact --dtype float16 --prompt-tokens 512 --new-tokens 32
echo "=== gpu-check: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
