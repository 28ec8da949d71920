#!/usr/bin/env bash
# A Docker engine for `make images` and the container test, started only when none answers,
# and stopped only if this script started it (recorded in .run/docker/).
#   scripts/docker-engine.sh install   apt-get install docker.io when dockerd is missing
#   scripts/docker-engine.sh start     install if needed; start dockerd unless one answers
#   scripts/docker-engine.sh stop      stop the dockerd `start` started (nothing else)
#   scripts/docker-engine.sh client    print the docker client to use
# The engine is started with no bridge and no iptables/NAT rules: containers run with
# --network host only, and builds with --network host.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=$PWD/.run/docker      # not .run/*.pid: scripts/down.sh stops those
PIDFILE=$STATE/dockerd.pid
LOG=$STATE/dockerd.log
RUNTIME_ROOT=/var/run/docker   # dockerd's --exec-root: its containerd and shims say so

# The client that comes with the engine: a newer stand-alone CLI without the buildx plugin
# cannot drive BuildKit, and Debian's docker.io client can (DOCKER_BUILDKIT=1).
client() {
    if [ -n "${DOCKER:-}" ]; then echo "$DOCKER"
    elif [ -x /usr/bin/docker ]; then echo /usr/bin/docker
    else command -v docker
    fi
}

answers() { "$(client)" info >/dev/null 2>&1; }

install() {
    if command -v dockerd >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "a Docker engine is needed: install docker.io (Debian/Ubuntu) or Docker Engine" >&2
        exit 1
    fi
    echo "installing docker.io with apt-get (its service is not started)"
    # Debian starts a package's service on installation unless policy-rc.d says no; that
    # engine would create the docker0 bridge and NAT rules. Forbid it for this install.
    local policy=/usr/sbin/policy-rc.d own_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    local status=0
    apt-get update -qq || status=$?
    if [ "$status" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker.io || status=$?
    fi
    [ -n "$own_policy" ] && rm -f "$policy"
    return "$status"
}

ours() {  # the pid recorded by `start`, if that process is still a dockerd
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && echo "$pid"
}

start() {
    if answers; then
        if ours >/dev/null; then echo "docker engine: running (started by this script)"
        else echo "docker engine: already running (not started here; left alone)"; fi
        return 0
    fi
    install
    mkdir -p "$STATE"
    echo "docker engine: starting dockerd (log $LOG)"
    # setsid: the engine outlives this shell, and a Ctrl-C in the caller's terminal does
    # not reach it; `stop` ends it.
    setsid dockerd --bridge=none --iptables=false --ip-masq=false \
        >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 120); do
        answers && { echo "docker engine: ready"; return 0; }
        ours >/dev/null || break
        sleep 0.5
    done
    echo "dockerd did not start; the end of $LOG:" >&2
    tail -20 "$LOG" >&2
    stop >&2 || true
    return 1
}

engine_processes() {  # $1 (dockerd), its containerd, and the shims serving that containerd
    local dir cmdline
    echo "$1"
    for dir in /proc/[0-9]*; do
        cmdline=$(tr '\0' ' ' 2>/dev/null <"$dir/cmdline") || continue
        case "$cmdline" in
            *"$RUNTIME_ROOT/containerd/containerd.sock"*|*"$RUNTIME_ROOT/containerd/containerd.toml"*)
                echo "${dir#/proc/}" ;;
        esac
    done
}

stop() {
    local pid
    if ! pid=$(ours); then
        rm -f "$PIDFILE"
        echo "docker engine: not started by this script; nothing to stop"
        return 0
    fi
    # dockerd stops its containers, then its own containerd; wait for all of them, shims too
    # (a shim is re-parented away from dockerd, but names its containerd's socket).
    local procs p
    procs=$(engine_processes "$pid")
    kill -TERM "$pid"
    for _ in $(seq 1 120); do
        local alive=""
        for p in $procs; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.5
    done
    for p in $procs; do
        if kill -0 "$p" 2>/dev/null; then
            echo "docker engine: process $p did not exit within 60 s" >&2
            return 1
        fi
    done
    # dockerd keeps its default network namespace mounted after it exits: release it.
    if mountpoint -q "$RUNTIME_ROOT/netns/default" 2>/dev/null; then
        umount "$RUNTIME_ROOT/netns/default"
    fi
    rm -f "$PIDFILE"
    echo "docker engine: stopped"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    client) client ;;
    *) echo "usage: $0 install|start|stop|client" >&2; exit 2 ;;
esac
