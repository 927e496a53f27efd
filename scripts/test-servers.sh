#!/usr/bin/env bash
# Installs the real OAuth and AWS servers the tests (and the demo) start on
# loopback: oidc-provider 9.13.3 from npm (tests/servers/oidc, pinned by its lock)
# and moto[server] 5.2.5 from PyPI (in .ebb/moto). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
oidc=tests/servers/oidc
if [ ! -d "$oidc/node_modules/oidc-provider" ]; then
  (cd "$oidc" && npm install --no-audit --no-fund --loglevel=error)
fi
# axe-core (npm, pinned by its lock) for the console's accessibility check.
browser=tests/servers/browser
if [ ! -f "$browser/node_modules/axe-core/axe.min.js" ]; then
  (cd "$browser" && npm install --no-audit --no-fund --loglevel=error)
fi
venv=.ebb/moto
if [ ! -x "$venv/bin/moto_server" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi
