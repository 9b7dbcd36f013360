#!/usr/bin/env bash
# A three-node RabbitMQ test cluster beside the machine's own broker, for the cluster tests.
#
#   rabbitmq-cluster.sh up           start whatever node is down and wait until all three
#                                    run as one cluster (a fresh cluster when none runs)
#   rabbitmq-cluster.sh kill N       kill -9 node N (1, 2 or 3)
#   rabbitmq-cluster.sh stop N       stop node N cleanly
#   rabbitmq-cluster.sh start N      start node N again and wait until it runs
#   rabbitmq-cluster.sh leader QUEUE the node (1, 2 or 3) leading quorum queue QUEUE, and how
#                                    many members the queue has: "N MEMBERS"
#   rabbitmq-cluster.sh fresh        down, then up: a new cluster with nothing left over
#   rabbitmq-cluster.sh down         stop every node and delete the cluster's data
#
# Node N listens for AMQP on 127.0.0.1:568N (guest/guest) and for Erlang distribution on
# 2568N; it is named dialex-test-N@localhost and keeps its data, logs and Erlang cookie under
# $DIALEX_CLUSTER_DIR (default: the temp directory). The broker on 5672 is never touched.
set -euo pipefail

base="${DIALEX_CLUSTER_DIR:-${TMPDIR:-/tmp}/dialex-rabbitmq-cluster}"
bin=/usr/lib/rabbitmq/bin
# The test nodes and rabbitmqctl share a cookie of their own, away from the machine's broker.
export HOME="$base"

fail() {
  echo "error: $*" >&2
  exit 1
}

[[ -x "$bin/rabbitmq-server" && -x "$bin/rabbitmqctl" ]] ||
  fail "the cluster tests need RabbitMQ's own scripts in $bin (Debian: apt-get install rabbitmq-server)"

node_name() { echo "dialex-test-$1@localhost"; }
amqp_port() { echo $((5680 + $1)); }
ctl() { # node args...
  local node=$1
  shift
  "$bin/rabbitmqctl" -n "$(node_name "$node")" "$@"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
running() { [[ -f "$base/n$1/pid" ]] && kill -0 "$(cat "$base/n$1/pid")" 2>/dev/null; }
check_node() { [[ "$1" =~ ^[123]$ ]] || fail "no node '$1': the cluster has nodes 1, 2 and 3"; }

start_node() { # node
  local dir="$base/n$1"
  mkdir -p "$dir"
  echo "listeners.tcp.local = 127.0.0.1:$(amqp_port "$1")" >"$dir/rabbitmq.conf"
  echo "[]." >"$dir/enabled_plugins"
  : >"$dir/rabbitmq-env.conf"
  rm -f "$dir/pid"
  (
    export RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf"
    export RABBITMQ_NODENAME="$(node_name "$1")"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export RABBITMQ_DIST_PORT=$((25680 + $1))
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_PID_FILE="$dir/pid"
    export ERL_EPMD_ADDRESS=127.0.0.1
    "$bin/rabbitmq-server" -detached
  ) || fail "node $1 did not start; see $dir/log"
}

await_node() { # node
  local i
  for ((i = 0; i < 120; i++)); do
    [[ -s "$base/n$1/pid" ]] && break
    sleep 0.5
  done
  ctl "$1" await_startup --timeout 90 >/dev/null 2>&1 ||
    fail "node $1 did not finish starting within 90 s; see $base/n$1/log"
}

await_down() { # node
  local i
  for ((i = 0; i < 120; i++)); do
    running "$1" || port_open "$(amqp_port "$1")" || return 0
    sleep 0.25
  done
  fail "node $1 is still running"
}

clustered() { # every node runs and sees all three
  local status
  status=$(ctl 1 cluster_status --formatter json 2>/dev/null) || return 1
  [[ $(grep -o '"running_nodes":\[[^]]*\]' <<<"$status" | grep -o 'dialex-test-' | wc -l) -eq 3 ]]
}

up() {
  local n
  if ! running 1 && ! running 2 && ! running 3; then
    # Nothing runs: start afresh rather than wait for peers of an old cluster.
    rm -rf "$base"
    mkdir -p "$base"
  fi
  for n in 1 2 3; do
    running "$n" || start_node "$n"
  done
  for n in 1 2 3; do
    await_node "$n"
  done
  if ! clustered; then
    for n in 2 3; do
      if ! ctl "$n" cluster_status 2>/dev/null | grep -q "$(node_name 1)"; then
        ctl "$n" stop_app >/dev/null
        ctl "$n" join_cluster "$(node_name 1)" >/dev/null
        ctl "$n" start_app >/dev/null
      fi
    done
  fi
  local i
  for ((i = 0; i < 60; i++)); do
    clustered && return 0
    sleep 0.5
  done
  fail "the three nodes did not form one cluster; see $base/n*/log"
}

down() {
  local n
  for n in 1 2 3; do
    # Whatever answers to the node's name, with or without its files.
    ctl "$n" stop >/dev/null 2>&1 || true
    running "$n" && kill -9 "$(cat "$base/n$n/pid")"
    await_down "$n"
  done
  rm -rf "$base"
}

case "${1:-}" in
up) up ;;
kill)
  check_node "${2:-}"
  running "$2" && kill -9 "$(cat "$base/n$2/pid")"
  await_down "$2"
  ;;
stop)
  check_node "${2:-}"
  # A node whose stop reports an error may still go down: judged by whether it did.
  ctl "$2" stop >/dev/null || echo "warning: rabbitmqctl stop reported an error for node $2" >&2
  await_down "$2"
  ;;
start)
  check_node "${2:-}"
  running "$2" || start_node "$2"
  await_node "$2"
  ;;
leader)
  [[ -n "${2:-}" ]] || fail "name the queue"
  for n in 1 2 3; do
    running "$n" || continue
    line=$(ctl "$n" list_queues name leader members --no-table-headers --quiet |
      awk -v q="$2" -F'\t' '$1 == q') || continue
    [[ -n "$line" ]] || fail "no queue $2"
    leader=$(cut -f2 <<<"$line")
    members=$(cut -f3 <<<"$line" | grep -o 'dialex-test-' | wc -l)
    echo "${leader:12:1} $members"
    exit 0
  done
  fail "no node of the cluster runs"
  ;;
down) down ;;
fresh)
  down
  up
  ;;
*) fail "usage: $0 up | fresh | kill N | stop N | start N | leader QUEUE | down" ;;
esac
