#!/usr/bin/env bash
# Starts RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379) when they are not already
# running, and waits until they accept connections. Says what is missing when it cannot.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  local i
  for ((i = 0; i < $3 * 2; i++)); do
    port_open "$2" && return 0
    sleep 0.5
  done
  echo "error: $1 did not start listening on 127.0.0.1:$2 within $3 s" >&2
  return 1
}

if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "starting RabbitMQ (rabbitmq-server -detached)" >&2
    rabbitmq-server -detached
    wait_for RabbitMQ 5672 90
    # The port opens before the broker is ready to declare quorum queues.
    if command -v rabbitmqctl >/dev/null 2>&1; then
      rabbitmqctl await_startup --timeout 90 >/dev/null 2>&1 || true
    fi
  else
    echo "error: RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed." >&2
    echo "       Install it (Debian: apt-get install rabbitmq-server) or start a broker there (guest/guest)." >&2
    exit 1
  fi
fi

if ! port_open 6379; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis" >&2
    redis_dir=/var/lib/redis
    [ -w "$redis_dir" ] || redis_dir="${TMPDIR:-/tmp}"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir "$redis_dir" --logfile "$redis_dir/redis-dialex.log"
    wait_for Redis 6379 30
  else
    echo "error: Redis is not running on 127.0.0.1:6379 and redis-server is not installed." >&2
    echo "       Install it (Debian: apt-get install redis-server) or start one there." >&2
    exit 1
  fi
fi
