#!/usr/bin/env bash
# Start rest, $WORKERS workers and the log listener in the background on loopback, wait
# until rest is ready, then scan the bundled photos. Idempotent: what runs is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run
PY=${PY:-.venv/bin/python}
PORT=${PORT:-5000}
WORKERS=${WORKERS:-2}
mkdir -p "$RUN"
# Images are kept in a local directory (the web page shows them); IMAGE_STORE=inline keeps
# none, IMAGE_STORE=gs://... uses a bucket. rest and every worker must name the same store.
export IMAGE_STORE=${IMAGE_STORE:-file://$PWD/$RUN/images}
export IMAGE_STORE_KEEP=${IMAGE_STORE_KEEP:-true}

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() {  # name, command...
    local name=$1; shift
    if running "$name"; then
        echo "$name: already running (pid $(cat "$RUN/$name.pid"))"
        return
    fi
    nohup "$@" >"$RUN/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
    echo "$name: started (pid $!, log $RUN/$name.log)"
}

start logs "$PY" -m logs
start rest env HOST=127.0.0.1 PORT="$PORT" "$PY" -m rest
for i in $(seq 1 "$WORKERS"); do
    start "worker$i" env WORKER_HEARTBEAT_FILE="$PWD/$RUN/worker$i.heartbeat" \
        METRICS_PORT=$((9100 + i)) "$PY" -m worker
done

for _ in $(seq 1 120); do
    if "$PY" - "$PORT" <<'PYEOF' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2)
PYEOF
    running rest || { echo "rest exited; see $RUN/rest.log" >&2; tail -20 "$RUN/rest.log" >&2; exit 1; }
    sleep 0.5
done
echo "facerec is up: http://localhost:$PORT   web page: http://localhost:$PORT/ui"
echo "  (images: $IMAGE_STORE; logs: tail -f $RUN/logs.log; stop: make down)"
"$PY" scripts/demo.py --rest "http://127.0.0.1:$PORT" tests/data/faces
