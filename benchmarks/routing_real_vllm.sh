#!/usr/bin/env bash
# Issue 18 on real vLLM (the lent GPU; see docs/benchmarks.md): four vLLM servers with 8B shapes (16 layers,
# random weights) on one GPU, each KV cache fixed at BLOCKS blocks of 16 tokens, then every contender of
# benchmarks/routing_real_vllm.py in front of them. Run from the repository root on the GPU machine after the
# vLLM wheels are installed in /tmp/site (the GPU recipe) and fleetgate's own wheels in /tmp/fgsite.
#   BLOCKS=1800 bash benchmarks/routing_real_vllm.sh OUTDIR LABEL RATE [routing_real_vllm.py flags...]
# Servers already running with the same BLOCKS are reused (their caches are reset before each contender).
# START_ONLY=1 starts the servers and returns (run it under setsid to have them start while a call ends).
# Sizes: on an H100 80 GB each server peaks at 17-20 GiB while it starts (weights, warm-up, KV cache): four of
# them fit with BLOCKS=1800 or 3000 (UTIL=0.2; 59 GB in use at 3000), not with BLOCKS=4000 (out of memory in
# warm-up, 2026-12-07); 4000 needs an H200.
set -uo pipefail
OUT=${1:?output directory} LABEL=${2:?label} RATE=${3:?requests per second}
shift 3
BLOCKS=${BLOCKS:-1800} UTIL=${UTIL:-0.2}
export PYTHONPATH=$PWD/src:/tmp/site:/tmp/fgsite:/tmp/vrsite PATH=/tmp/site/bin:/tmp/vrsite/bin:$PATH \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1 \
  VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_SERVER_DEV_MODE=1
mkdir -p "$OUT/logs"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
if [ ! -f /tmp/model/config.json ]; then
  python3 /tmp/whl/make_model_dir.py /tmp/model --arch llama --vocab-size 128256 > "$OUT/model.log" 2>&1
  python3 - <<'PY'
import json; p = "/tmp/model/config.json"; c = json.load(open(p)); c["num_hidden_layers"] = 16; json.dump(c, open(p, "w"))
PY
fi
if [ "$(cat /tmp/vllm-blocks 2>/dev/null)" != "$BLOCKS" ]; then
  # Stop servers of another cache size by the pids listening on their ports (never by name), children too.
  python3 - <<'PY'
import psutil
for c in psutil.net_connections("tcp"):
    if c.status == "LISTEN" and 8000 <= c.laddr.port <= 8003 and c.pid:
        # The API server's engine-core child holds the GPU memory: kill the whole tree.
        proc = psutil.Process(c.pid)
        for p in [*proc.children(recursive=True), proc]:
            p.kill()
PY
  sleep 5
  start=$(date +%s)
  for i in 0 1 2 3; do
    kv="{\"enable_kv_cache_events\":true,\"publisher\":\"zmq\",\"endpoint\":\"tcp://*:$((5600 + i))\",\"topic\":\"kv\"}"
    setsid nohup python3 -m vllm.entrypoints.cli.main serve /tmp/model --load-format dummy \
      --served-model-name llama-8b --host 127.0.0.1 --port $((8000 + i)) --gpu-memory-utilization "$UTIL" \
      --num-gpu-blocks-override "$BLOCKS" --max-model-len 4096 --enforce-eager --kv-events-config "$kv" \
      --enable-auto-tool-choice --tool-call-parser hermes > "$OUT/logs/vllm-$i-$BLOCKS.log" 2>&1 &
    pids[i]=$!
  done
  for i in 0 1 2 3; do
    for _ in $(seq 1 300); do  # a server that died (out of memory, a bad flag) is not waited for
      curl -sf "127.0.0.1:$((8000 + i))/health" >/dev/null || ! kill -0 "${pids[i]}" 2>/dev/null && break
      sleep 1
    done
    if ! curl -sf "127.0.0.1:$((8000 + i))/health" >/dev/null; then
      echo "server $i did not start: $OUT/logs/vllm-$i-$BLOCKS.log" | tee -a "$OUT/routing.md"
      exit 1
    fi
  done
  echo "4 servers with $BLOCKS blocks up after $(( $(date +%s) - start )) s" | tee -a "$OUT/routing.md"
  echo "$BLOCKS" > /tmp/vllm-blocks
fi
[ -n "${START_ONLY:-}" ] && exit 0
python3 benchmarks/routing_real_vllm.py --upstreams http://127.0.0.1:8000,http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003 \
  --kv-port 5600 --tokenizer /tmp/model --rate "$RATE" --label "$LABEL" --out "$OUT/routing.jsonl" \
  --log-dir "$OUT/logs" "$@" 2>&1 | tee -a "$OUT/routing.md"
