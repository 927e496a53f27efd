#!/usr/bin/env bash
# Sets up the machine and runs every test: unit tests, the runtime's sandbox tests
# and the connectors against real downstream systems started on loopback. Ends with
# one line that totals every cargo test run: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The OAuth and AWS servers the oauth2 and aws-iam connectors are tested against.
./scripts/test-servers.sh
# Warnings in connectors fail the build in CI, as in the host.
if [ "${CI:-}" = "true" ]; then export EBB_PLUGINS_DENY_WARNINGS=1; fi
# Everything is installed above: a test that would skip for a missing server fails.
export EBB_REQUIRE_ALL=1
# Connectors written in other languages, built before the tests that load them.
./scripts/build-py-connector.sh
./scripts/build-js-connector.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --all-targets also runs each bench once in test mode, so they cannot rot.
cargo test --workspace --all-targets --locked 2>&1 | tee -a "$log" || status=$?
if [ "$status" = 0 ]; then
  cargo test --workspace --doc --locked 2>&1 | tee -a "$log" || status=$?
fi
# The connectors' own unit tests run natively (their build target is wasm32-wasip2).
if [ "$status" = 0 ]; then
  host=$(rustc -vV | sed -n 's/^host: //p')
  (cd plugins && cargo test --workspace --locked --target "$host") 2>&1 | tee -a "$log" || status=$?
fi
# The API fuzz pass (schemathesis against the served OpenAPI document) counts as one test.
if [ "$status" = 0 ]; then
  ./scripts/fuzz-api.sh 2>&1 | tee -a "$log" || status=$?
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     /^api fuzz: passed/ { p += 1 } /^api fuzz: FAILED/ { f += 1 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
