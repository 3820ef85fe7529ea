#!/usr/bin/env bash
# Measures how long a new chunkserver takes to receive every chunk of a cluster holding
# SIZE_MIB of data (default 1024), beside `cp` + sync of the same bytes on the same disk.
# One controller, one full chunkserver, then a second one joins; the clock runs from the
# new chunkserver's start until the controller reports it holds every live chunk.
# Usage: scripts/measure-fill.sh [SIZE_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build -q -p redcloud
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/debug/redcloud"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ctl=127.0.0.1:27500
export REDCLOUD_HOME="$work/home" REDCLOUD_CONTROLLERS="$ctl"
"$bin" controller --data "$work/ctl" --listen "$ctl" --p2p-listen /ip4/127.0.0.1/tcp/27501 \
  --metrics-listen "" --no-mdns >"$work/ctl.log" 2>&1 & pids+=($!)
"$bin" chunkserver --data "$work/cs1" --listen 127.0.0.1:27510 --controller "$ctl" \
  --scrub-rate 0 >"$work/cs1.log" 2>&1 & pids+=($!)
for _ in $(seq 1 120); do
  "$bin" --json status 2>/dev/null | grep -q '"state":"active"' && break
  sleep 0.25
done
echo pw | "$bin" register bench --password-stdin >/dev/null
echo pw | "$bin" login bench --password-stdin >/dev/null
per=$((size_mib / 8))
for i in $(seq 1 8); do
  head -c "$((per << 20))" /dev/urandom >"$work/f$i.bin"
  "$bin" add "$work/f$i.bin" --tag fill >/dev/null
  rm "$work/f$i.bin"
done
sync
now() { date +%s.%N; }
start=$(now)
cp -r "$work/cs1" "$work/cs-copy" && sync
cp_s=$(echo "$(now) - $start" | bc)
rm -rf "$work/cs-copy"; sync
total=$("$bin" --json status | sed -n 's/.*"chunks":{[^}]*"total":\([0-9]*\).*/\1/p')
start=$(now)
"$bin" chunkserver --data "$work/cs2" --listen 127.0.0.1:27511 --controller "$ctl" \
  --scrub-rate 0 >"$work/cs2.log" 2>&1 & pids+=($!)
for _ in $(seq 1 2400); do
  s=$("$bin" --json status)
  if echo "$s" | grep -q "\"address\":\"127.0.0.1:27511\",\"capacity_bytes\":[0-9]*,\"chunks\":$total,"; then break; fi
  sleep 0.25
done
fill_s=$(echo "$(now) - $start" | bc)
printf 'data %d MiB in %d chunks\n' "$((per * 8))" "$total"
printf 'cp -r + sync of the store: %6.2f s\n' "$cp_s"
printf 'new chunkserver filled:    %6.2f s  (%.2fx cp, including start-up and detection)\n' \
  "$fill_s" "$(echo "$fill_s / $cp_s" | bc -l)"
