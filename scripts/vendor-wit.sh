#!/usr/bin/env bash
# Vendors the WASI 0.2 WIT packages that ebb:connector imports (wasi:http and what it
# depends on) from the wasmtime-wasi-http crate the host is pinned to, so the host's
# bindgen!, the SDK's generate! and the host's wasi:http implementation agree exactly.
# CI re-runs this and fails on any diff (scripts/check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^wasmtime-wasi-http = { version = "=\([0-9.]*\)".*/\1/p' Cargo.toml)
cargo fetch --quiet
src=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "wasmtime-wasi-http-$version" | head -n 1)
[ -n "$src" ] || { echo "wasmtime-wasi-http $version not found in the cargo registry" >&2; exit 1; }
# wit/deps/ebb-connector-0.1.0 is ours (the host interfaces and the 0.1.0 contract):
# only the WASI packages are replaced.
for pkg in cli clocks filesystem http io random sockets; do
  rm -rf "wit/deps/$pkg" && mkdir -p "wit/deps/$pkg"
  cp "$src/wit/deps/$pkg.wit" "wit/deps/$pkg/$pkg.wit"
done
