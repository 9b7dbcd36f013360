#!/usr/bin/env bash
# Supply-chain checks: `cargo deny check` (advisories, licences, bans, sources; deny.toml).
#
#   bash scripts/supply-chain.sh                 fetches the RustSec database as usual
#   bash scripts/supply-chain.sh SNAPSHOT_DIR    uses a plain-files copy of the database
#                                                instead of fetching it
#
# cargo-deny is installed from crates.io when it is missing (once per machine: cargo keeps
# the binary in ~/.cargo/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version >/dev/null 2>&1; then
  echo "installing cargo-deny $CARGO_DENY_VERSION from crates.io" >&2
  cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION"
fi

snapshot=${1:-}
if [[ -z "$snapshot" ]]; then
  exec cargo deny check
fi
if [[ ! -d "$snapshot/crates" ]]; then
  echo "error: $snapshot does not hold a RustSec advisory database (no crates/ folder)" >&2
  exit 2
fi

# cargo-deny reads a database as a git checkout, under a folder named after its URL, and
# dates it by its last commit: lay the snapshot out that way, dated by its newest advisory.
db_root=target/advisory-db
db="$db_root/advisory-db-3157b0e258782691"
newest=$(grep -rhoE '^date = "[0-9]{4}-[0-9]{2}-[0-9]{2}"' "$snapshot/crates" | sort | tail -n 1 | grep -oE '[0-9-]{10}')
rm -rf "$db_root"
mkdir -p "$db"
cp -R "$snapshot/." "$db/"
(
  cd "$db"
  git init --quiet
  git add --all
  GIT_AUTHOR_DATE="${newest}T00:00:00Z" GIT_COMMITTER_DATE="${newest}T00:00:00Z" \
    git -c user.name=snapshot -c user.email=snapshot@localhost -c commit.gpgsign=false \
    commit --quiet --message "RustSec advisory database snapshot of $newest"
)

# cargo-deny reads every crate the lock file names, for every platform, from cargo's cache;
# offline it cannot download the ones a fresh machine's builds never needed.
cargo fetch --locked --quiet

# The same checks with the local copy. A snapshot is refreshed now and then rather than
# daily, so it may be older than the default staleness limit of 90 days.
config="$db_root/deny.toml"
sed -e "s|^db-urls = .*|&\ndb-path = \"$db_root\"\nmaximum-db-staleness = \"P365D\"|" deny.toml >"$config"
echo "advisories from the snapshot of $newest" >&2
cargo deny --offline --config "$config" check
