#!/usr/bin/env bash
# The demo: starts RabbitMQ and Redis if needed, then runs a simulator and a worker
# in-process, publishes sample requests and prints their outcome events.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo run --quiet -p dialex-devkit -- demo "$@"
