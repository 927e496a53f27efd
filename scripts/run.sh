#!/usr/bin/env bash
# The main job: sets up the machine, builds the bundled connectors and the host, starts
# a demo PostgreSQL (unless EBB_PG_DSN points at yours) and runs `ebb serve` with the
# embedded store under .ebb/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
(cd plugins && cargo build --release --workspace --locked)
cargo build --release --locked -p ebb-host
mkdir -p .ebb
export EBB_PG_DSN=${EBB_PG_DSN:-$(./scripts/demo-postgres.sh)}
wasm=$(pwd)/plugins/target/wasm32-wasip2/release
cat > .ebb/ebb.toml <<TOML
# Written by scripts/run.sh. The DSN is read from the environment, never stored here.
[runtime]
cache-dir = "$(pwd)/.ebb/cache"

[connectors.postgres]
component = "$wasm/postgres.wasm"
config = { allowed-resources = "public.invoices, public.customers" }
sql.main = { dsn-env = "EBB_PG_DSN", max-connections = 4 }

[connectors.noop]
component = "$wasm/noop.wasm"
TOML
exec ./target/release/ebb serve --config .ebb/ebb.toml "$@"
