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
# Output goes to a file, then to the terminal: a stray grandchild of a test
# holding a pipe open can never make this wait.
cargo test --workspace > "$log" 2>&1 || status=$?
cat "$log"
passed=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}' || true)
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}' || true)
echo
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
