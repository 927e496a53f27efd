#!/usr/bin/env bash
# The main job: sets up the machine, builds the bundled connectors and the host, starts
# a demo PostgreSQL and Redis (unless EBB_PG_DSN / EBB_REDIS_URL point at yours) and
# runs `ebb serve` with the embedded store under .ebb/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
(cd plugins && cargo build --release --workspace --locked)
cargo build --release --locked -p ebb-host
mkdir -p .ebb
export EBB_PG_DSN=${EBB_PG_DSN:-$(./scripts/demo-postgres.sh)}
export EBB_REDIS_URL=${EBB_REDIS_URL:-$(./scripts/demo-redis.sh)}
wasm=$(pwd)/plugins/target/wasm32-wasip2/release

# Demo API tokens, made once. The config holds only their sha256.
if [ ! -f .ebb/tokens.env ]; then
  umask 077
  {
    for who in operator agent approver; do
      echo "EBB_TOKEN_$(echo "$who" | tr a-z A-Z)=ebb_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    done
  } > .ebb/tokens.env
fi
# shellcheck disable=SC1091
. .ebb/tokens.env
hash() { printf %s "$1" | sha256sum | cut -d' ' -f1; }

cat > .ebb/ebb.toml <<TOML
# Written by scripts/run.sh. The DSN is read from the environment, never stored here.
[server]
listen = "127.0.0.1:${EBB_PORT:-8700}"

[store]
path = "data"
key-file = "host.key"

[runtime]
cache-dir = "$(pwd)/.ebb/cache"

# Connectors loaded while the host runs (ebb connectors load|reload|unload, or files).
[plugins]
dir = "plugins"

[[tokens]]
name = "operator"
sha256 = "$(hash "$EBB_TOKEN_OPERATOR")"
roles = ["operator", "auditor"]

[[tokens]]
name = "agent"
subject = "spiffe://demo/billing-agent"
sha256 = "$(hash "$EBB_TOKEN_AGENT")"
roles = ["requester"]

[[tokens]]
name = "approver"
sha256 = "$(hash "$EBB_TOKEN_APPROVER")"
roles = ["approver"]

[connectors.postgres]
component = "$wasm/postgres.wasm"
config = { allowed-resources = "public.invoices, public.customers" }
sql.main = { dsn-env = "EBB_PG_DSN", max-connections = 4 }

[connectors.redis]
component = "$wasm/redis.wasm"
config = { allowed-keys = "cache:*" }
redis.main = { url-env = "EBB_REDIS_URL" }

[connectors.noop]
component = "$wasm/noop.wasm"
lifecycle = { approval = "auto" }
TOML
echo "API on http://127.0.0.1:${EBB_PORT:-8700}; demo tokens in .ebb/tokens.env" >&2
exec ./target/release/ebb serve --config .ebb/ebb.toml "$@"
