#!/usr/bin/env bash
# A Redis primary, its replica and three sentinels beside the machine's own Redis, for the
# replication and failover tests.
#
#   redis-ha.sh up          start whatever is down and wait until the primary has its replica
#                           and the sentinels agree on it (a fresh set when nothing runs)
#   redis-ha.sh kill PORT   kill -9 the server on PORT (6391 or 6392)
#   redis-ha.sh start PORT  start the server on PORT again, as a replica of the current primary
#   redis-ha.sh primary     the port of the primary, as the sentinels name it
#   redis-ha.sh down        stop everything and delete its files
#
# The servers listen on 127.0.0.1:6391 (the first primary) and 6392 (its replica), keep
# nothing on disk, and are watched as "dialex-test" by sentinels on 26391-26393 (quorum 2,
# a primary is down after 1 s without an answer). Files live under $DIALEX_REDIS_HA_DIR
# (default: the temp directory). The Redis on 6379 is never touched.
set -euo pipefail

base="${DIALEX_REDIS_HA_DIR:-${TMPDIR:-/tmp}/dialex-redis-ha}"
servers=(6391 6392)
sentinels=(26391 26392 26393)
service=dialex-test

fail() {
  echo "error: $*" >&2
  exit 1
}

command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
  fail "the replication tests need redis-server and redis-cli (Debian: apt-get install redis-server)"

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }
running() { [[ -f "$base/$1.pid" ]] && kill -0 "$(cat "$base/$1.pid")" 2>/dev/null; }
gone() { ! running "$1"; }
check_server() { [[ " ${servers[*]} " == *" $1 "* ]] || fail "no server on '$1': they are ${servers[*]}"; }

await() { # what seconds command...
  local what=$1 seconds=$2 i
  shift 2
  for ((i = 0; i < seconds * 4; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  fail "$what within $seconds s; see $base/*.log"
}

# The primary's port as the first answering sentinel names it (6391 before any sentinel runs).
primary() {
  local port answer
  for port in "${sentinels[@]}"; do
    answer=$(cli "$port" SENTINEL get-master-addr-by-name "$service" 2>/dev/null | sed -n 2p) || continue
    if [[ -n "$answer" ]]; then
      echo "$answer"
      return 0
    fi
  done
  echo "${servers[0]}"
}

start_server() { # port [primary port]
  # Each server has its own file for the copies replication writes, deleted first, so a
  # restarted server starts empty (like a pod without a volume) and never loads another's.
  # A primary sends a returning replica its copy at once, not after the default 5 s wait for
  # more replicas.
  local args=(--port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$base"
    --dbfilename "$1.rdb" --repl-diskless-sync-delay 0
    --daemonize yes --pidfile "$base/$1.pid" --logfile "$base/$1.log")
  [[ -n "${2:-}" && "$2" != "$1" ]] && args+=(--replicaof 127.0.0.1 "$2")
  rm -f "$base/$1.pid" "$base/$1.rdb"
  redis-server "${args[@]}" || fail "the Redis server on $1 did not start; see $base/$1.log"
  await "the Redis server on $1 did not answer" 10 cli "$1" PING
}

start_sentinel() { # port
  local conf="$base/sentinel-$1.conf"
  # A sentinel rewrites its file as it learns: written once, on a fresh start.
  if [[ ! -f "$conf" ]]; then
    cat >"$conf" <<EOF
port $1
bind 127.0.0.1
daemonize yes
pidfile $base/$1.pid
logfile $base/$1.log
dir $base
sentinel monitor $service 127.0.0.1 ${servers[0]} 2
sentinel down-after-milliseconds $service 1000
sentinel failover-timeout $service 5000
sentinel parallel-syncs $service 1
EOF
  fi
  rm -f "$base/$1.pid"
  redis-server "$conf" --sentinel || fail "the sentinel on $1 did not start; see $base/$1.log"
  await "the sentinel on $1 did not answer" 10 cli "$1" PING
}

replica_online() { # primary port
  cli "$1" INFO replication | grep -q '^slave0:.*state=online'
}

sentinels_agree() { # primary port
  local port
  for port in "${sentinels[@]}"; do
    [[ $(cli "$port" SENTINEL get-master-addr-by-name "$service" | sed -n 2p) == "$1" ]] || return 1
    # Each knows the replica and the other two sentinels.
    [[ $(cli "$port" SENTINEL master "$service" | sed -n '/^num-other-sentinels$/{n;p}') == 2 ]] || return 1
    [[ $(cli "$port" SENTINEL master "$service" | sed -n '/^num-slaves$/{n;p}') -ge 1 ]] || return 1
  done
}

up() {
  local port any=false current
  for port in "${servers[@]}" "${sentinels[@]}"; do
    running "$port" && any=true
  done
  if ! $any; then
    rm -rf "$base"
    mkdir -p "$base"
  fi
  current=$(primary)
  running "$current" || start_server "$current"
  for port in "${servers[@]}"; do
    running "$port" || start_server "$port" "$current"
  done
  for port in "${sentinels[@]}"; do
    running "$port" || start_sentinel "$port"
  done
  await "the replica did not catch up with the primary on $current" 30 replica_online "$current"
  await "the sentinels did not agree on the primary $current" 30 sentinels_agree "$current"
}

case "${1:-}" in
up) up ;;
kill)
  check_server "${2:-}"
  running "$2" && kill -9 "$(cat "$base/$2.pid")"
  await "the server on $2 is still running" 10 gone "$2"
  ;;
start)
  check_server "${2:-}"
  running "$2" || start_server "$2" "$(primary)"
  ;;
primary) primary ;;
down)
  for port in "${sentinels[@]}" "${servers[@]}"; do
    running "$port" && kill -9 "$(cat "$base/$port.pid")"
  done
  rm -rf "$base"
  ;;
*) fail "usage: $0 up | kill PORT | start PORT | primary | down" ;;
esac
