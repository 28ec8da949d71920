#!/usr/bin/env bash
# Stop what `make up` started: its processes (from .run/*.pid), then Redis/RabbitMQ only if
# `make up` was the one that started them.
#
# A pid file can outlive its process (a reboot, a crash) and the pid be reused by anything
# else: a pid is signalled only if it is still the process `make up` started under that
# name — `python -m <name>` (worker1 → worker) running in this directory, started no later
# than its pid file was written.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run
[ -d "$RUN" ] || { echo "nothing to stop"; exit 0; }

started_at() {  # pid -> seconds since the epoch when it started
    local stat ticks boot
    stat=$(cat "/proc/$1/stat") || return 1
    # Fields after the command name, which is in parentheses and may hold spaces.
    read -r -a fields <<<"${stat##*) }"
    ticks=${fields[19]}  # field 22, starttime, in clock ticks since boot
    boot=$(awk '/^btime/ {print $2}' /proc/stat)
    echo $((boot + ticks / $(getconf CLK_TCK)))
}

ours() {  # pid, name, pid file -> true if pid is still the process make up started
    local pid=$1 module=${2%%[0-9]*} pidfile=$3 args
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$PWD" ] || return 1
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ " $args" == *" -m $module "* ]] || return 1
    [ "$(started_at "$pid")" -le $(($(stat -c %Y "$pidfile") + 1)) ]
}

shopt -s nullglob
for pidfile in "$RUN"/*.pid; do
    name=$(basename "$pidfile" .pid)
    [ "$name" = redis-server ] && continue  # services.sh owns that one
    pid=$(cat "$pidfile")
    if ours "$pid" "$name" "$pidfile"; then
        kill -TERM "$pid"
        for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "$name: stopped"
    elif kill -0 "$pid" 2>/dev/null; then
        echo "$name: pid $pid is not the process make up started (stale pid file): left alone"
    fi
    rm -f "$pidfile"
done
scripts/services.sh stop
