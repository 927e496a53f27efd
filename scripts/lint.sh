#!/usr/bin/env bash
# Formatting, clippy (host workspace and plugins/ for wasm32-wasip2) and the
# vendored-WIT drift check.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
# No module of a host crate imports another in a cycle.
python3 scripts/check-modules.py
(cd plugins && cargo fmt --all -- --check)
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd plugins && cargo clippy --workspace --all-targets --locked --target wasm32-wasip2 -- -D warnings)
./scripts/vendor-wit.sh
git diff --exit-code -- wit/deps || { echo "wit/deps differs from wasmtime-wasi-http's: run scripts/vendor-wit.sh" >&2; exit 1; }
