#!/usr/bin/env bash
# Makes a Docker engine available for the Docker deployment test (cli/tests/docker_swarm.rs),
# as root: installs Debian's docker.io when dockerd is missing and starts dockerd when no
# engine answers. Starting dockerd sets iptables' FORWARD policy to DROP, which silently
# breaks the bridged network-namespace tests; the policy is set back to ACCEPT (Docker's own
# rules, in their chains, still isolate its networks). Safe to run again.
set -euo pipefail
[[ $(id -u) -eq 0 ]] || { echo "docker-up: needs root" >&2; exit 1; }
if ! command -v dockerd >/dev/null; then
  echo "docker-up: installing docker.io" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log=/var/log/redcloud-dockerd.log
  echo "docker-up: starting dockerd (log $log)" >&2
  nohup dockerd >"$log" 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -20 "$log" >&2; exit 1; }
fi
iptables -P FORWARD ACCEPT
