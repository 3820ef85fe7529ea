#!/usr/bin/env bash
# Measures upload and download throughput of one large file on a fresh dev cluster
# (3 controllers, 3 chunkservers, replication `all`, write quorum 2) beside `cp` + sync of the
# same file on the same disk. Usage: scripts/measure-transfer.sh [SIZE_MIB] (default 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build -q -p redcloud
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/debug/redcloud"
work=$(mktemp -d)
base=27100
dev_pid=""
cleanup() {
  [[ -n $dev_pid ]] && kill -TERM "$dev_pid" 2>/dev/null && wait "$dev_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export REDCLOUD_HOME="$work/home" REDCLOUD_CONTROLLERS="127.0.0.1:$base,127.0.0.1:$((base+1)),127.0.0.1:$((base+2))"
"$bin" dev --data "$work/data" --base-port "$base" >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 120); do
  "$bin" --json status 2>/dev/null | grep -q '"state":"active".*"state":"active".*"state":"active"' && break
  sleep 0.5
done
echo pw | "$bin" register bench --password-stdin >/dev/null
echo pw | "$bin" login bench --password-stdin >/dev/null
head -c "$((size_mib << 20))" /dev/urandom >"$work/file.bin"
secs() { local s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
cp_s=$(secs bash -c "cp '$work/file.bin' '$work/copy.bin' && sync '$work/copy.bin'")
up_s=$(secs "$bin" add "$work/file.bin" --tag bench)
rm -f "$work/copy.bin"; sync
down_s=$(secs "$bin" download file.bin -o "$work/down.bin")
cmp "$work/file.bin" "$work/down.bin"
rate() { echo "scale=1; $size_mib / $1" | bc; }
printf 'file %d MiB\n' "$size_mib"
printf 'cp + sync:  %6.2f s  %7.1f MiB/s\n' "$cp_s" "$(rate "$cp_s")"
printf 'upload:     %6.2f s  %7.1f MiB/s  (%.2fx cp time)\n' "$up_s" "$(rate "$up_s")" "$(echo "$up_s / $cp_s" | bc -l)"
printf 'download:   %6.2f s  %7.1f MiB/s  (%.2fx cp time, verified byte-identical)\n' "$down_s" "$(rate "$down_s")" "$(echo "$down_s / $cp_s" | bc -l)"
