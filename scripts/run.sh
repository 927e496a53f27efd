#!/usr/bin/env bash
# The main job: sets up the machine, builds the bundled connectors and the host, starts
# a demo PostgreSQL and Redis (unless EBB_PG_DSN / EBB_REDIS_URL point at yours), a
# demo OAuth 2.0 server (oidc-provider) and AWS IAM (moto), and runs `ebb serve` with
# the embedded store under .ebb/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/test-servers.sh
(cd plugins && cargo build --release --workspace --locked)
cargo build --release --locked -p ebb
mkdir -p .ebb
export EBB_PG_DSN=${EBB_PG_DSN:-$(./scripts/demo-postgres.sh)}
export EBB_REDIS_URL=${EBB_REDIS_URL:-$(./scripts/demo-redis.sh)}
# Secrets the host holds for the oauth2 and aws-iam connectors, from the environment.
EBB_OIDC_CLIENT_SECRET=$(./scripts/demo-oauth.sh)
export EBB_OIDC_CLIENT_SECRET
read -r aws_key_id EBB_AWS_SECRET_ACCESS_KEY < <(./scripts/demo-aws.sh)
export EBB_AWS_SECRET_ACCESS_KEY
oidc=http://127.0.0.1:${EBB_DEMO_OIDC_PORT:-44440}
moto=http://127.0.0.1:${EBB_DEMO_MOTO_PORT:-50550}
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
# Written by scripts/run.sh. DSNs and secrets are read from the environment, never stored here.
[server]
listen = "127.0.0.1:${EBB_PORT:-8700}"

[store]
path = "data"
# The embedded engine: sled (the default) or fjall (faster commits; a folder
# written by one engine is refused by the other).
engine = "${EBB_STORE_ENGINE:-sled}"
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

# OAuth 2.0 tokens; the client secret is added by the host, never seen by the connector.
[connectors.oauth2]
component = "$wasm/oauth2.wasm"
http.allow-private = ["$oidc"]
http.basic-auth."$oidc" = { user = "ebb", password-env = "EBB_OIDC_CLIENT_SECRET" }

[connectors.oauth2.config]
token-endpoint = "$oidc/token"
revocation-endpoint = "$oidc/token/revocation"
introspection-endpoint = "$oidc/token/introspection"
allowed-scopes = "invoices:read, reports:read"

# Per-grant IAM users; the admin secret is lent to the connector for SigV4 signing.
[connectors.aws]
component = "$wasm/aws_iam.wasm"
http.allow-private = ["$moto"]
secrets.secret-access-key = { env = "EBB_AWS_SECRET_ACCESS_KEY" }

[connectors.aws.config]
iam-endpoint = "$moto"
sts-endpoint = "$moto"
access-key-id = "$aws_key_id"
allowed-actions = "s3:ListAllMyBuckets, s3:GetObject"
allowed-resources = "*"

[connectors.noop]
component = "$wasm/noop.wasm"
lifecycle = { approval = "auto" }

# The web console. People sign in at the demo identity provider as alice (approver,
# operator), bob (approver), carol (requester) or dave (auditor), any password; or
# with a token from .ebb/tokens.env.
[console]
public-url = "http://127.0.0.1:${EBB_PORT:-8700}"

[console.oidc]
issuer = "$oidc"
client-id = "ebb-console"
client-secret-env = "EBB_OIDC_CLIENT_SECRET"
scopes = ["openid", "profile", "groups"]
name = "the demo identity provider"

[console.oidc.roles]
ebb-approvers = ["approver"]
ebb-operators = ["operator", "auditor"]
ebb-auditors = ["auditor"]
ebb-requesters = ["requester"]
TOML
echo "API on http://127.0.0.1:${EBB_PORT:-8700}; demo tokens in .ebb/tokens.env" >&2
echo "Console on http://127.0.0.1:${EBB_PORT:-8700}/console/ (sign in as alice, bob, carol or dave, any password)" >&2
exec ./target/release/ebb serve --config .ebb/ebb.toml "$@"
