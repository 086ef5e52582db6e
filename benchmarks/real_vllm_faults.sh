#!/usr/bin/env bash
# Issue 11 and 12 on a real vLLM (the lent GPU; see docs/benchmarks.md): clients leaving 50/100/200 streams
# through the gateway must leave no upstream request running, and `fleetgate serve` must turn vLLM's
# out-of-memory start into one line and exit 1. Run from the repository root on the GPU machine after the
# vLLM wheels are installed in /tmp/site (the GPU recipe) and fleetgate's own wheels in /tmp/fgsite.
#   bash benchmarks/real_vllm_faults.sh OUTDIR        (STREAMS="50 100 200" by default)
set -uo pipefail
OUT=${1:?output directory}
export PYTHONPATH=$PWD/src:/tmp/site:/tmp/fgsite PATH=/tmp/site/bin:$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
python3 /tmp/whl/make_model_dir.py /tmp/model --arch llama --vocab-size 128256 > "$OUT/model.log" 2>&1
# Cut to 16 layers: 8B shapes at half the weights, up in about a minute.
python3 - <<'PY'
import json; p = "/tmp/model/config.json"; c = json.load(open(p)); c["num_hidden_layers"] = 16; json.dump(c, open(p, "w"))
PY
setsid nohup python3 -m vllm.entrypoints.cli.main serve /tmp/model --load-format dummy --served-model-name llama-8b \
  --host 127.0.0.1 --port 8000 --gpu-memory-utilization 0.5 --enforce-eager > "$OUT/vllm.log" 2>&1 &
start=$(date +%s)
for i in $(seq 1 300); do curl -sf 127.0.0.1:8000/health >/dev/null && break; sleep 1; done
echo "vllm up after $(( $(date +%s) - start )) s" | tee "$OUT/summary.txt"
for n in ${STREAMS:-50 100 200}; do
  python3 benchmarks/chaos.py --only disconnect --streams "$n" --upstream http://127.0.0.1:8000 --model llama-8b \
    2>&1 | tee -a "$OUT/summary.txt" | tail -3
done
# vLLM asking for 0.9 of a GPU that already has 0.5 taken: its start fails for lack of memory.
start=$(date +%s)
timeout 300 python3 -m fleetgate serve /tmp/model --served-model-name oom --port 8100 --admin-port 8101 \
  -- --load-format dummy --gpu-memory-utilization 0.9 --enforce-eager > "$OUT/oom.txt" 2>&1
echo "serve with too little free memory: exit $? after $(( $(date +%s) - start )) s; its last lines:" >> "$OUT/summary.txt"
tail -5 "$OUT/oom.txt" >> "$OUT/summary.txt"
grep -h "Free memory\|Error" fleetgate-logs/*.log 2>/dev/null | head -5 > "$OUT/oom-cause.txt"
cat "$OUT/summary.txt"
