#!/usr/bin/env bash
# Starts (or reuses) a demo AWS IAM/STS — moto's server with authentication on — on
# 127.0.0.1:${EBB_DEMO_MOTO_PORT:-50550}, logging to .ebb/moto-demo/server.log, with
# the `ebb-admin` user the aws-iam connector is lent. moto keeps state in memory, so
# a new server gets a new admin key. Prints "<access key id> <secret>" on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${EBB_DEMO_MOTO_PORT:-50550}
dir=$(pwd)/.ebb/moto-demo
mkdir -p "$dir"
umask 077
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || [ ! -s "$dir/admin.json" ]; then
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    nohup .ebb/moto/bin/moto_server -H 127.0.0.1 -p "$port" < /dev/null > "$dir/server.log" 2>&1 &
    for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  fi
  .ebb/moto/bin/python tests/servers/aws/admin.py "http://127.0.0.1:$port" > "$dir/admin.json"
fi
.ebb/moto/bin/python -c 'import json,sys; k=json.load(open(sys.argv[1])); print(k["access_key_id"], k["secret_access_key"])' "$dir/admin.json"
