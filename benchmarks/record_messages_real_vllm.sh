#!/usr/bin/env bash
# On the lent GPU (see docs/benchmarks.md): one real vLLM with tools on, then (1) what it answers on Anthropic's
# Messages routes (benchmarks/record_messages_contract.py -> OUTDIR/messages_contract.json) and (2) whether
# `fleetgate serve` turns vLLM's out-of-memory start into one line and exit 1 (a second vLLM asking for 0.9 of
# a GPU the first holds half of). Run from the repository root after the vLLM wheels are installed in /tmp/site
# (the GPU recipe) and fleetgate's own wheels in /tmp/fgsite.
#   bash benchmarks/record_messages_real_vllm.sh OUTDIR
set -uo pipefail
OUT=${1:?output directory}
export PYTHONPATH=$PWD/src:/tmp/site:/tmp/fgsite PATH=/tmp/site/bin:$PATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
python3 /tmp/whl/make_model_dir.py /tmp/qwen --arch qwen2 > "$OUT/model.log" 2>&1
start=$(date +%s)
setsid nohup python3 -m vllm.entrypoints.cli.main serve /tmp/qwen --load-format dummy --served-model-name llama-8b \
  --host 127.0.0.1 --port 8000 --gpu-memory-utilization 0.5 --max-model-len 4096 --enforce-eager \
  --enable-auto-tool-choice --tool-call-parser hermes > "$OUT/vllm.log" 2>&1 &
VLLM_PID=$!
for _ in $(seq 1 240); do curl -sf 127.0.0.1:8000/health >/dev/null && break; sleep 1; done
echo "vllm up after $(( $(date +%s) - start )) s" | tee "$OUT/summary.txt"
timeout 120 python3 benchmarks/record_messages_contract.py --url http://127.0.0.1:8000 --model llama-8b \
  --out "$OUT/messages_contract.json" 2>&1 | tr '\n' ' ' | tee -a "$OUT/summary.txt"
echo >> "$OUT/summary.txt"
start=$(date +%s)
timeout 150 python3 -m fleetgate serve /tmp/qwen --served-model-name oom --port 8100 --admin-port 8101 \
  -- --load-format dummy --gpu-memory-utilization 0.9 --enforce-eager > "$OUT/oom.txt" 2>&1
echo "serve with too little free memory: exit $? after $(( $(date +%s) - start )) s; its last lines:" >> "$OUT/summary.txt"
tail -3 "$OUT/oom.txt" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
# Stop the server and its engine-core child (which holds the GPU memory) by pid, never by name.
kill -9 $(ps -o pid= --ppid "$VLLM_PID") "$VLLM_PID" 2>/dev/null
