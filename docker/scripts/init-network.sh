#!/usr/bin/env bash
# Initialises a single-node swarm when none is active, and creates the attachable overlay
# network `dfs-network` when missing. Safe to run again. On a multi-host deployment run it on
# the first manager; the other hosts join with `docker swarm join` (see the README).
# The swarm's advertise address: $REDCLOUD_SWARM_ADDR, else the default route's source IP.
source "$(dirname "$0")/lib.sh"
state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [[ $state != active ]]; then
  addr="${REDCLOUD_SWARM_ADDR:-$(ip -4 route get 192.0.2.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')}"
  [[ -n $addr ]] || addr=127.0.0.1
  docker swarm init --advertise-addr "$addr" >/dev/null
  echo "swarm initialised (advertise address $addr)"
fi
if ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
  docker network create --driver overlay --attachable --label "$LABEL" "$NETWORK" >/dev/null
  echo "created overlay network $NETWORK"
fi
echo "network $NETWORK ready"
