#!/usr/bin/env bash
# The test command of the README: builds the binaries once (the end-to-end
# tests start them), then runs every test of the workspace: unit, golden,
# property and end-to-end tests. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
