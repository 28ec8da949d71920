#!/usr/bin/env bash
# Run facerec's services on a local Kubernetes cluster (kind, minikube, k3d, Docker Desktop)
# and port-forward them to this machine.
#
#   ./deploy-local-dev.sh          Redis and RabbitMQ only (deploy/overlays/dev-infra); run
#                                  `python -m rest` / `python -m worker` on the laptop.
#   ./deploy-local-dev.sh --all    everything (deploy/overlays/dev), rest on localhost:5000.
#   ./deploy-local-dev.sh --stop   end the port-forwards this script started, and only those.
#
# Progress goes to stderr; the environment to export goes to stdout, so this works:
#   eval "$(./deploy-local-dev.sh)"
# Running it again is safe: the manifests are re-applied (no change means no restart) and
# the port-forwards it started before are replaced by fresh ones.
#
# Environment: REDIS_LOCAL_PORT (6379), RABBITMQ_LOCAL_PORT (5672), RABBITMQ_UI_LOCAL_PORT
# (15672), REST_LOCAL_PORT (5000), FACEREC_ROLLOUT_TIMEOUT (300s), FACEREC_RUN_DIR (.run
# beside this script: the record of started port-forwards, "PID TARGET" per line, and
# their logs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAMESPACE=facerec-dev
RUN_DIR="${FACEREC_RUN_DIR:-$ROOT/.run}"
STATE="$RUN_DIR/port-forwards.pids"
ROLLOUT_TIMEOUT="${FACEREC_ROLLOUT_TIMEOUT:-300s}"
REDIS_LOCAL_PORT="${REDIS_LOCAL_PORT:-6379}"
RABBITMQ_LOCAL_PORT="${RABBITMQ_LOCAL_PORT:-5672}"
RABBITMQ_UI_LOCAL_PORT="${RABBITMQ_UI_LOCAL_PORT:-15672}"
REST_LOCAL_PORT="${REST_LOCAL_PORT:-5000}"
# Seconds a new port-forward gets to report "Forwarding from".
FORWARD_WAIT=20

say() { printf '%s\n' "$*" >&2; }
die() {
    printf 'deploy-local-dev.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
Usage: deploy-local-dev.sh [--all | --stop | --help]

  (no option)  deploy Redis and RabbitMQ to the current kubectl context (namespace
               facerec-dev), wait until they are ready, port-forward 6379, 5672 and 15672
               (RabbitMQ UI), and print the environment variables to export
  --all        deploy everything (rest, worker, logs too; images facerec-rest:dev and
               facerec-worker:dev must be in the cluster) and also forward rest to 5000
  --stop       end the port-forwards this script started (and no other process)
EOF
}

# True if PID is alive and still the kubectl port-forward to TARGET that we started: a
# recorded PID may have been reused by an unrelated process since.
is_our_forward() {
    local pid=$1 target=$2 args
    args="$(ps -p "$pid" -o args= 2>/dev/null)" || return 1
    [[ $args == *kubectl* && $args == *port-forward* && $args == *"$target"* ]]
}

# stop_forwards [report]: end the recorded port-forwards that are still ours.
stop_forwards() {
    local pid target stopped=0 tries
    if [[ ! -f $STATE ]]; then
        [[ ${1:-} == report ]] && say "no port-forwards to stop"
        return 0
    fi
    while read -r pid target; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if is_our_forward "$pid" "$target"; then
            kill "$pid" 2>/dev/null || true
            tries=0
            while is_our_forward "$pid" "$target" && ((tries < 50)); do
                sleep 0.1
                tries=$((tries + 1))
            done
            if is_our_forward "$pid" "$target"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
            say "stopped port-forward to $target (pid $pid)"
            stopped=$((stopped + 1))
        fi
    done <"$STATE"
    rm -f "$STATE"
    if [[ ${1:-} == report && $stopped == 0 ]]; then
        say "no port-forwards to stop (those recorded had already ended)"
    fi
    return 0
}

# start_forward NAME TARGET LOCAL:REMOTE...: a background kubectl port-forward, recorded in
# $STATE before anything can fail, so --stop and the exit trap always know about it.
start_forward() {
    local name=$1 target=$2 pid log waited=0
    shift 2
    log="$RUN_DIR/port-forward-$name.log"
    nohup kubectl --namespace "$NAMESPACE" port-forward "$target" "$@" \
        </dev/null >"$log" 2>&1 &
    pid=$!
    printf '%s %s\n' "$pid" "$target" >>"$STATE"
    until grep -q '^Forwarding from' "$log"; do
        if ! is_our_forward "$pid" "$target"; then
            die "kubectl port-forward $target $* failed (is the local port in use?):
$(cat "$log")"
        fi
        if ((waited >= FORWARD_WAIT * 5)); then
            die "kubectl port-forward $target $* did not start within ${FORWARD_WAIT}s:
$(cat "$log")"
        fi
        sleep 0.2
        waited=$((waited + 1))
    done
    say "forwarding $* (localhost:cluster) to $target, pid $pid, log $log"
}

# If anything fails after port-forwards were started, end them: never leave orphans.
on_exit() {
    local status=$?
    if ((status != 0)); then
        stop_forwards
    fi
    exit "$status"
}

secret_value() {
    kubectl --namespace "$NAMESPACE" get secret "$1" \
        -o "go-template={{index .data \"$2\" | base64decode}}"
}

wait_for() {
    local workload=$1 hint=$2
    say "waiting for $workload (up to $ROLLOUT_TIMEOUT)..."
    if ! kubectl --namespace "$NAMESPACE" rollout status "$workload" \
        --timeout="$ROLLOUT_TIMEOUT" >&2; then
        die "$workload did not become ready within $ROLLOUT_TIMEOUT.
Look at: kubectl --namespace $NAMESPACE get pods
         kubectl --namespace $NAMESPACE describe $workload$hint"
    fi
}

main() {
    local mode=infra
    case "${1:-}" in
        "") ;;
        --all) mode=all ;;
        --stop) mode=stop ;;
        -h | --help)
            usage
            return 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
    if (($# > 1)); then
        usage >&2
        exit 2
    fi

    if [[ $mode == stop ]]; then
        stop_forwards report
        return 0
    fi

    command -v kubectl >/dev/null 2>&1 ||
        die "kubectl is not installed (or not on PATH). Install it, see
https://kubernetes.io/docs/tasks/tools/, then run this again."
    local context
    context="$(kubectl config current-context 2>/dev/null)" || context=""
    [[ -n $context ]] ||
        die "kubectl has no current context. Start a local cluster (kind create cluster,
minikube start, k3d cluster create, or enable Kubernetes in Docker Desktop), or pick one
with: kubectl config use-context NAME"
    kubectl --request-timeout=10s get --raw=/readyz >/dev/null 2>&1 ||
        die "the cluster of context '$context' does not answer. Is it running?"
    say "using kubectl context '$context', namespace $NAMESPACE"

    mkdir -p "$RUN_DIR"
    # Replace the forwards of an earlier run: their pods may be gone by now.
    stop_forwards
    trap on_exit EXIT
    trap 'exit 130' INT TERM HUP

    local overlay=dev-infra
    [[ $mode == all ]] && overlay=dev
    kubectl apply -k "$ROOT/deploy/overlays/$overlay" >&2

    wait_for deployment/redis ""
    wait_for statefulset/rabbitmq ""
    if [[ $mode == all ]]; then
        local images_hint="
Are the images in the cluster? Build facerec-rest:dev and facerec-worker:dev and load
them (README.md, \"Deploying on Kubernetes\")."
        wait_for deployment/rest "$images_hint"
        wait_for deployment/worker "$images_hint"
        wait_for deployment/logs "$images_hint"
    fi

    start_forward redis svc/redis "$REDIS_LOCAL_PORT:6379"
    start_forward rabbitmq svc/rabbitmq "$RABBITMQ_LOCAL_PORT:5672" "$RABBITMQ_UI_LOCAL_PORT:15672"
    if [[ $mode == all ]]; then
        start_forward rest svc/rest "$REST_LOCAL_PORT:80"
    fi

    local redis_password rabbitmq_user rabbitmq_password
    redis_password="$(secret_value facerec-redis password)"
    rabbitmq_user="$(secret_value facerec-rabbitmq username)"
    rabbitmq_password="$(secret_value facerec-rabbitmq password)"

    printf 'export %s=%q\n' \
        REDIS_HOST localhost \
        REDIS_PORT "$REDIS_LOCAL_PORT" \
        REDIS_PASSWORD "$redis_password" \
        RABBITMQ_HOST localhost \
        RABBITMQ_PORT "$RABBITMQ_LOCAL_PORT" \
        RABBITMQ_USER "$rabbitmq_user" \
        RABBITMQ_PASSWORD "$rabbitmq_password" \
        RABBITMQ_VHOST /
    say ""
    say "RabbitMQ UI: http://localhost:$RABBITMQ_UI_LOCAL_PORT (user $rabbitmq_user)"
    if [[ $mode == all ]]; then
        say "rest: http://localhost:$REST_LOCAL_PORT    logs: kubectl --namespace $NAMESPACE logs -f deploy/logs"
    fi
    say "Export the variables above (or: eval \"\$(./deploy-local-dev.sh${1:+ $1})\")."
    say "End the port-forwards with: ./deploy-local-dev.sh --stop"
}

main "$@"
