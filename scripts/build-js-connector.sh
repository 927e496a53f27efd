#!/usr/bin/env bash
# Builds the JavaScript connector (plugins/js-redis) into a component with jco
# 1.34.0 and componentize-js 0.23.0 (npm, pinned by its package-lock.json), into
# target/js-plugins/redis_js.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
src=plugins/js-redis
if [ ! -x "$src/node_modules/.bin/jco" ]; then
  # `npm install`, not `npm ci`: this npm leaves platform-specific optional
  # packages out of the lock file, and `npm ci` then refuses it. Versions are pinned
  # exactly in package.json and, transitively, by the lock.
  (cd "$src" && npm install --no-audit --no-fund --loglevel=error)
fi
mkdir -p target/js-plugins
out=target/js-plugins/redis_js.wasm
if [ ! -f "$out" ] || [ -n "$(find "$src/connector.js" wit -newer "$out" -print -quit)" ]; then
  "$src/node_modules/.bin/jco" componentize "$src/connector.js" --wit wit --world-name "ebb:connector/plugin@0.2.0" -o "$out.tmp" >/dev/null
  mv "$out.tmp" "$out"
fi
echo "$out"
