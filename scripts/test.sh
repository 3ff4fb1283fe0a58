#!/usr/bin/env bash
# The test command of the README: builds the binaries once, then runs every
# test of the workspace (unit, golden, property and end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace
