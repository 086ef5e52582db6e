#!/usr/bin/env bash
# `make run` from the clone, as a user runs it: it starts, answers the quick start's own curl (taken from
# docs/quickstart.md), `fleetgate status` and the worker log folder are there, and on SIGINT it exits 0 with
# its port freed and no process left behind. Then a taken port is refused with the way out, and
# `make run MODEL=DIR` serves a model directory. Every wait has a deadline so CI never hangs here.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8000}
ADMIN_PORT=${ADMIN_PORT:-8001}
LOG=$(mktemp)
fail() { echo "check-make-run: $*" >&2; tail -n 40 "$LOG" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The quick start talks to the server with curl, as its users do.
if ! command -v curl >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl >/dev/null
fi

port_open "$PORT" && fail "port $PORT is already in use"

# A taken port (vLLM's default is 8000 too): one line naming the way out, before any banner.
python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1",int(sys.argv[1]))); s.listen(); time.sleep(120)' "$PORT" &
HOLDER=$!
until port_open "$PORT"; do sleep 0.1; done
if make run PORT="$PORT" ADMIN_PORT="$ADMIN_PORT" >"$LOG" 2>&1; then kill "$HOLDER"; fail "make run started on a taken port"; fi
kill "$HOLDER"; wait "$HOLDER" 2>/dev/null || true
grep -q "try make run PORT=$((PORT + 100))" "$LOG" || fail "no 'make run PORT=...' hint for a taken port"
grep -q "DEMO" "$LOG" && fail "the banner was printed before the port check"
while port_open "$PORT"; do sleep 0.1; done
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
# The quick start's curl, as docs/quickstart.md prints it (QUICKSTART_CURL), on this port. Held by the
# gateway until the worker is ready, then answered.
QUICKSTART_CURL=$(python3 - "$PORT" <<'PY'
import re, sys
text = open("docs/quickstart.md").read()
block = re.search(r"```bash\n(curl .*?)```", text, re.S)[1].replace("\\\n", " ")
print(block.strip().replace("localhost:8000", f"127.0.0.1:{sys.argv[1]}"))
PY
)
# Each output is read whole before it is searched: `grep -q` leaves at the first match, and under pipefail
# the writer's broken pipe would fail the check.
answer=$(eval "${QUICKSTART_CURL/curl -s/curl -sS --fail --max-time 300}") || fail "the quick start's curl failed"
grep -q '"choices"' <<<"$answer" || fail "no chat completion"
status=$(.venv/bin/fleetgate status --admin "127.0.0.1:$ADMIN_PORT") || fail "fleetgate status failed"
grep -q "demo-1" <<<"$status" || fail "fleetgate status"
ls fleetgate-logs/ | grep -q "demo-1.log" || fail "no worker log in fleetgate-logs/"
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

# make run MODEL=DIR: a model directory (the demo model's, made by the first run) under its path's name.
MODEL_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/fleetgate/demo-model"
setsid make run MODEL="$MODEL_DIR" PORT="$PORT" ADMIN_PORT="$ADMIN_PORT" >"$LOG" 2>&1 &
MAKE_PID=$!
trap 'kill -KILL -- -"$MAKE_PID" 2>/dev/null || true' EXIT
deadline=$((SECONDS + 300))
until port_open "$PORT"; do
  kill -0 "$MAKE_PID" 2>/dev/null || fail "make run MODEL=... exited before listening"
  [ "$SECONDS" -lt "$deadline" ] || fail "make run MODEL=... not listening after 300 s"
  sleep 0.5
done
answer=$(curl -sS --fail --max-time 300 "http://127.0.0.1:$PORT/v1/chat/completions" \
  -H 'content-type: application/json' \
  -d "{\"model\": \"$MODEL_DIR\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 4}") \
  || fail "make run MODEL=... : the curl failed"
grep -q '"choices"' <<<"$answer" || fail "make run MODEL=... gave no chat completion"
kill -INT "$(pgrep -P "$MAKE_PID" | head -n 1)"
timeout 60 tail --pid="$MAKE_PID" -f /dev/null || fail "make run MODEL=... still running 60 s after SIGINT"
trap - EXIT
echo "check-make-run: ok (port check, answered the quick start's curl, status, logs, exit 0 on SIGINT, port" \
  "$PORT freed, nothing left; make run MODEL=DIR answered)"
