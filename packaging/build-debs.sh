#!/usr/bin/env bash
# Builds target/debian/o1-relay_*.deb and o1-agent_*.deb with cargo-deb.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
cargo build --release -p o1-relay -p o1-agent
cargo deb --no-build -p o1-relay
cargo deb --no-build -p o1-agent
ls target/debian/*.deb
