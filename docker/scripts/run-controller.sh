#!/usr/bin/env bash
# Starts one more controller on `dfs-network` with the DNS alias `controller`: run it N times
# for N controllers. Its data (metadata and node identity) lives in the volume of the same
# name, so a restarted or re-created container is the same controller. Controllers find each
# other through the alias (every address it resolves to is dialled) and Kademlia.
# Extra arguments go to `redcloud controller` (see `redcloud controller --help`).
source "$(dirname "$0")/lib.sh"
need_secret
need_network
n=$(next_index controller)
name="$PREFIX-controller-$n"
docker volume create --label "$LABEL" "$name" >/dev/null
docker run -d --name "$name" --hostname "$name" \
  --label "$LABEL" --label redcloud.role=controller \
  --network "$NETWORK" --network-alias controller \
  --restart unless-stopped \
  -v "$name:/data" \
  --mount "type=bind,src=$SECRET_FILE,dst=/run/redcloud/cluster.secret,readonly" \
  "$IMAGE" --secret-file /run/redcloud/cluster.secret \
  controller --data /data --listen 0.0.0.0:7100 --advertise "$name:7100" \
  --p2p-listen /ip4/0.0.0.0/tcp/7300 --metrics-listen 0.0.0.0:7400 "$@" >/dev/null
echo "$name"
