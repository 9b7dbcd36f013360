#!/usr/bin/env bash
# The test command: starts RabbitMQ and Redis if needed, then runs every test: doc tests, then
# unit and integration tests (against the real broker and the CCC simulator).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --workspace --doc --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast
else
  cargo test --workspace --all-targets --no-fail-fast
fi
