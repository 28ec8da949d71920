#!/usr/bin/env bash
# Stop what `make up` started: its processes (from .run/*.pid), then Redis/RabbitMQ only if
# `make up` was the one that started them.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run
[ -d "$RUN" ] || { echo "nothing to stop"; exit 0; }
shopt -s nullglob
for pidfile in "$RUN"/*.pid; do
    name=$(basename "$pidfile" .pid)
    [ "$name" = redis-server ] && continue  # services.sh owns that one
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "$name: stopped"
    fi
    rm -f "$pidfile"
done
scripts/services.sh stop
