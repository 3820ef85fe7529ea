#!/usr/bin/env bash
# Runs the randomized fault schedules (cli/tests/jepsen.rs) for N more seeds than CI does:
#   scripts/soak.sh [N] [PHASES]
# Seeds are random unless REDCLOUD_JEPSEN_SEEDS is set; a failing seed is printed with the
# command that replays it. Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10}"
phases="${2:-8}"
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/redcloud-target}"
export REDCLOUD_NETNS_REQUIRED=1
if [ -z "${REDCLOUD_JEPSEN_SEEDS:-}" ]; then
  seeds=""
  for _ in $(seq "$n"); do
    seeds="${seeds:+$seeds,}$(( (RANDOM << 15 | RANDOM) ))"
  done
  export REDCLOUD_JEPSEN_SEEDS="$seeds"
fi
export REDCLOUD_JEPSEN_PHASES="$phases"
echo "soak: seeds $REDCLOUD_JEPSEN_SEEDS, $phases phases each"
cargo nextest run -p redcloud --test jepsen --no-capture randomized_fault_schedules_lose_nothing
