#!/usr/bin/env bash
# Installs the system packages redcloud needs to build and test on Debian/Ubuntu:
#   clang + libclang-dev  RocksDB's bindgen (librocksdb-sys) needs libclang
#   iproute2, nftables    the network-namespace fault tests (ip netns, veth, bridges, drop rules)
# protoc is NOT needed: the proto crate uses the protoc binary shipped in protoc-bin-vendored.
# Safe to run repeatedly: it installs only what is missing.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in clang libclang-dev iproute2 nftables; do
  have_pkg "$pkg" || need+=("$pkg")
done

if ((${#need[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "setup: missing packages ${need[*]} and no apt-get; install them by hand" >&2
    exit 1
  fi
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
