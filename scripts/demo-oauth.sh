#!/usr/bin/env bash
# Starts (or reuses) a demo OAuth 2.0 server — oidc-provider, tests/servers/oidc —
# on 127.0.0.1:${EBB_DEMO_OIDC_PORT:-44440}, logging to .ebb/oidc/server.log. Its
# client `ebb` may request invoices:read, invoices:write and reports:read; tokens
# live 5 minutes. People sign in to Ebb's web console there (client `ebb-console`,
# same secret) as alice, bob, carol or dave, with any password. Prints the client secret on stdout (it is also in .ebb/oidc/).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${EBB_DEMO_OIDC_PORT:-44440}
dir=$(pwd)/.ebb/oidc
mkdir -p "$dir"
umask 077
[ -f "$dir/client.pw" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/client.pw"
[ -f "$dir/probe.pw" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/probe.pw"
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  # Detached from this script's stdout, which the caller reads to its end.
  (cd tests/servers/oidc && OIDC_PORT=$port OIDC_CLIENT_SECRET=$(cat "$dir/client.pw") \
    OIDC_PROBE_SECRET=$(cat "$dir/probe.pw") OIDC_TOKEN_TTL=300 \
    OIDC_CONSOLE_REDIRECT="http://127.0.0.1:${EBB_PORT:-8700}/console/callback" \
    exec nohup node server.mjs) < /dev/null > "$dir/server.log" 2>&1 &
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
fi
cat "$dir/client.pw"
