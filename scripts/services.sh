#!/usr/bin/env bash
# Start Redis and RabbitMQ on localhost if none is reachable, and remember which ones this
# script started (in .run/) so that `make down` stops those and nothing else.
#   scripts/services.sh start | stop
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=.run
REDIS_PORT=${REDIS_PORT:-6379}
RABBITMQ_PORT=${RABBITMQ_PORT:-5672}
export PATH="$PATH:/usr/sbin"
mkdir -p "$RUN"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # port, what, seconds
    for _ in $(seq 1 $(($3 * 4))); do listening "$1" && return 0; sleep 0.25; done
    echo "$2 did not start listening on port $1 within $3 s" >&2
    return 1
}

start() {
    if listening "$REDIS_PORT"; then
        echo "Redis: already running on 127.0.0.1:$REDIS_PORT"
    else
        echo "Redis: starting on 127.0.0.1:$REDIS_PORT"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
            --appendonly no --dir "$PWD/$RUN" --pidfile "$PWD/$RUN/redis-server.pid" \
            --logfile "$PWD/$RUN/redis-server.log"
        touch "$RUN/started-redis"
        wait_for "$REDIS_PORT" Redis 15
    fi
    if listening "$RABBITMQ_PORT"; then
        echo "RabbitMQ: already running on 127.0.0.1:$RABBITMQ_PORT"
    else
        echo "RabbitMQ: starting (rabbitmq-server -detached)"
        rabbitmq-server -detached
        touch "$RUN/started-rabbitmq"
        rabbitmqctl -q --timeout 120 await_startup
        wait_for "$RABBITMQ_PORT" RabbitMQ 60
    fi
}

stop() {
    if [ -f "$RUN/started-redis" ]; then
        echo "Redis: stopping the server make up started"
        kill "$(cat "$RUN/redis-server.pid")" 2>/dev/null || true
        rm -f "$RUN/started-redis"
    fi
    if [ -f "$RUN/started-rabbitmq" ]; then
        echo "RabbitMQ: stopping the server make up started"
        rabbitmqctl -q stop || true
        rm -f "$RUN/started-rabbitmq"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
