#!/usr/bin/env bash
# `make run` from the clone, as a user runs it: it starts, answers one chat request, and on SIGINT exits 0
# with its port freed and no process left behind. Every wait has a deadline so CI never hangs here.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8000}
ADMIN_PORT=${ADMIN_PORT:-8001}
LOG=$(mktemp)
fail() { echo "check-make-run: $*" >&2; tail -n 40 "$LOG" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_open "$PORT" && fail "port $PORT is already in use"
# Its own session: whatever it leaves behind is found by session id, and only it gets the signal.
setsid make run PORT="$PORT" ADMIN_PORT="$ADMIN_PORT" >"$LOG" 2>&1 &
MAKE_PID=$!
trap 'kill -KILL -- -"$MAKE_PID" 2>/dev/null || true' EXIT

deadline=$((SECONDS + 300))  # the first run creates the demo model
until port_open "$PORT"; do
  kill -0 "$MAKE_PID" 2>/dev/null || fail "make run exited before listening"
  [ "$SECONDS" -lt "$deadline" ] || fail "not listening on :$PORT after 300 s"
  sleep 0.5
done
grep -q "DEMO" "$LOG" || fail "the demo is not announced"
# Held by the gateway until the worker is ready, then answered.
curl -sS --fail --max-time 300 "http://127.0.0.1:$PORT/v1/chat/completions" \
  -H 'content-type: application/json' \
  -d '{"model": "demo", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}' \
  | grep -q '"choices"' || fail "no chat completion"
WORKERS=$(curl -sS --max-time 5 "http://127.0.0.1:$ADMIN_PORT/admin/fleet" \
  | python3 -c 'import json,sys; print(" ".join(str(w["pid"]) for p in json.load(sys.stdin)["pools"].values() for w in p.get("workers", []) if w["pid"]))')
[ -n "$WORKERS" ] || fail "no worker listed in /admin/fleet"

# make's recipe execs fleetgate: it is make's only child, and Ctrl-C's SIGINT is what it must handle.
FLEETGATE=$(pgrep -P "$MAKE_PID" | head -n 1)
[ -n "$FLEETGATE" ] || fail "fleetgate process not found"
kill -INT "$FLEETGATE"
rc=0
timeout 60 tail --pid="$MAKE_PID" -f /dev/null || fail "still running 60 s after SIGINT"
wait "$MAKE_PID" || rc=$?
[ "$rc" -eq 0 ] || fail "make run exited with $rc after SIGINT"
port_open "$PORT" && fail "port $PORT still open after exit"
left=$(pgrep -s "$MAKE_PID" || true)
for pid in $WORKERS; do kill -0 "$pid" 2>/dev/null && left="$left $pid"; done
[ -z "${left// /}" ] || fail "processes left behind: $left"
trap - EXIT
echo "check-make-run: ok (answered, exit 0 on SIGINT, port $PORT freed, nothing left)"
