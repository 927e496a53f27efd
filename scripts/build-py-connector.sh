#!/usr/bin/env bash
# Builds the Python connector (plugins/python-redis) into a component with
# componentize-py (PyPI), into target/py-plugins/redis_py.wasm. Installs
# componentize-py into .ebb/venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.ebb/venv
if [ ! -x "$venv/bin/componentize-py" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'componentize-py==0.25.1'
fi
mkdir -p target/py-plugins
out=target/py-plugins/redis_py.wasm
if [ ! -f "$out" ] || [ -n "$(find plugins/python-redis wit -newer "$out" -print -quit)" ]; then
  "$venv/bin/componentize-py" -d wit -w ebb:connector/plugin@0.2.0 componentize app \
    -p plugins/python-redis -o "$out.tmp"
  mv "$out.tmp" "$out"
fi
echo "$out"
