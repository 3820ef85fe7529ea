#!/usr/bin/env bash
# The whole test suite: installs what the build needs, then runs every test of the workspace
# (unit, property, in-process cluster and, as root, the network-namespace tests).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
