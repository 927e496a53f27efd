#!/usr/bin/env bash
# Starts (or reuses) a demo Redis on 127.0.0.1:${EBB_DEMO_REDIS_PORT:-63790} under
# .ebb/redis, with an `ebb` ACL user for the redis connector (`+acl +client|list
# +ping`) and a few `cache:` keys to grant. Prints the connector's URL on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${EBB_DEMO_REDIS_PORT:-63790}
dir=$(pwd)/.ebb/redis
mkdir -p "$dir"
[ -f "$dir/default.pw" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/default.pw"
[ -f "$dir/ebb.pw" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$dir/ebb.pw"
default_pw=$(cat "$dir/default.pw")
ebb_pw=$(cat "$dir/ebb.pw")
cli() { REDISCLI_AUTH="$default_pw" redis-cli -h 127.0.0.1 -p "$port" --no-auth-warning "$@"; }
if ! cli ping >/dev/null 2>&1; then
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --requirepass "$default_pw" --daemonize yes --logfile "$dir/server.log" >/dev/null
  for _ in $(seq 1 100); do cli ping >/dev/null 2>&1 && break; sleep 0.05; done
fi
cli ACL SETUSER ebb on ">$ebb_pw" +acl "+client|list" +ping >/dev/null
cli SET cache:greeting hello >/dev/null
echo "redis://ebb:$ebb_pw@127.0.0.1:$port"
