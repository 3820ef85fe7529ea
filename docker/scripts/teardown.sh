#!/usr/bin/env bash
# Removes what these scripts created: containers, their volumes (unless --keep-data), the
# stack if deployed, and the network `dfs-network`. With --leave-swarm it also leaves the
# swarm (forcing, on a single-node swarm). Images and docker/cluster.secret stay.
source "$(dirname "$0")/lib.sh"
keep_data=0 leave=0
for a in "$@"; do
  case $a in
    --keep-data) keep_data=1 ;;
    --leave-swarm) leave=1 ;;
    *) die "unknown flag $a" ;;
  esac
done
if [[ $(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null) == true ]] &&
  docker stack ls --format '{{.Name}}' 2>/dev/null | grep -qx redcloud; then
  docker stack rm redcloud >/dev/null
fi
ids=$(docker ps -aq --filter "label=$LABEL")
[[ -z $ids ]] || docker rm -f $ids >/dev/null
if ((!keep_data)); then
  vols=$(docker volume ls -q --filter "label=$LABEL")
  [[ -z $vols ]] || docker volume rm -f $vols >/dev/null
fi
docker network inspect "$NETWORK" >/dev/null 2>&1 && docker network rm "$NETWORK" >/dev/null
if ((leave)); then
  docker swarm leave --force >/dev/null 2>&1 || true
fi
echo "removed redcloud containers$( ((keep_data)) || echo ", volumes") and $NETWORK"
