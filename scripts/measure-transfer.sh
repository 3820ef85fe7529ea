#!/usr/bin/env bash
# Measures what TLS costs on the data path: upload and download throughput of one file on a
# cluster of one controller and one chunkserver, once with TLS (the default: a cluster
# secret) and once plaintext (`--insecure`), in one run, beside `cp` + sync of the same file
# on the same disk. Usage: scripts/measure-transfer.sh [SIZE_MIB] [PROFILE]
# (default 1024 MiB, profile `dev`; `release` builds and measures the release binary).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
profile=${2:-dev}
if [[ $profile == release ]]; then
  cargo build -q --release -p redcloud
  dir=release
else
  cargo build -q -p redcloud
  dir=debug
fi
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/$dir/redcloud"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
"$bin" secret --output "$work/cluster.secret" 2>/dev/null
head -c "$((size_mib << 20))" /dev/urandom >"$work/file.bin"
secs() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
rate() { echo "scale=1; $size_mib / $1" | bc; }
cp_s=$(secs bash -c "cp '$work/file.bin' '$work/copy.bin' && sync '$work/copy.bin'")
rm -f "$work/copy.bin"

# One run per mode: fresh data directories, same binary, same file.
run_mode() {
  local mode=$1 base=$2 flags=()
  if [[ $mode == tls ]]; then
    flags=(--secret-file "$work/cluster.secret")
  else
    flags=(--insecure)
  fi
  local d="$work/$mode"
  mkdir -p "$d"
  "$bin" "${flags[@]}" controller --data "$d/ctl" --listen "127.0.0.1:$base" \
    --advertise "127.0.0.1:$base" --p2p-listen "/ip4/127.0.0.1/tcp/$((base + 200))" \
    --metrics-listen "" --no-mdns --write-quorum 1 >"$d/ctl.log" 2>&1 &
  pids+=($!)
  "$bin" "${flags[@]}" --controller "127.0.0.1:$base" chunkserver --data "$d/cs" \
    --listen "127.0.0.1:$((base + 100))" --advertise "127.0.0.1:$((base + 100))" \
    --scrub-rate 0 >"$d/cs.log" 2>&1 &
  pids+=($!)
  export REDCLOUD_HOME="$d/home" REDCLOUD_CONTROLLERS="127.0.0.1:$base"
  local cli=("$bin" "${flags[@]}")
  for _ in $(seq 1 120); do
    "${cli[@]}" --json status 2>/dev/null | grep -q '"state":"active"' && break
    sleep 0.5
  done
  echo bench-password | "${cli[@]}" register bench --password-stdin >/dev/null
  echo bench-password | "${cli[@]}" login bench --password-stdin >/dev/null
  sync
  local up down
  up=$(secs "${cli[@]}" add "$work/file.bin" --tag bench)
  down=$(secs "${cli[@]}" download file.bin -o "$d/down.bin")
  cmp "$work/file.bin" "$d/down.bin"
  rm -f "$d/down.bin"
  printf '%-10s upload %6.2f s %7.1f MiB/s (cp+sync time / upload time %.2fx)   download %6.2f s %7.1f MiB/s\n' \
    "$mode" "$up" "$(rate "$up")" "$(echo "$cp_s / $up" | bc -l)" "$down" "$(rate "$down")"
}

printf 'file %d MiB, %s profile, 1 controller + 1 chunkserver on loopback\n' "$size_mib" "$profile"
printf 'cp + sync  %6.2f s %7.1f MiB/s\n' "$cp_s" "$(rate "$cp_s")"
run_mode tls 27100
run_mode plaintext 27400
echo "(downloads verified byte-identical)"
