#!/usr/bin/env bash
# Brings the number of chunkservers on `dfs-network` to N: starts stopped ones and adds new
# ones (alias `chunkserver`, data in a volume of the container's name, so a restarted or
# re-created container keeps its identity and chunks), or stops and removes the
# highest-numbered ones beyond N (their volumes stay: scaling up again brings their chunks
# back). Retire a chunkserver for good with `redcloud drain ID` first, so its chunks are
# copied elsewhere before it goes. Extra arguments go to `redcloud chunkserver`.
source "$(dirname "$0")/lib.sh"
want=${1:?usage: scale-chunkserver.sh N [chunkserver flags...]}
shift
[[ $want =~ ^[0-9]+$ ]] || die "N must be a number"
need_secret
need_network
for ((n = 1; n <= want; n++)); do
  name="$PREFIX-chunkserver-$n"
  if docker container inspect "$name" >/dev/null 2>&1; then
    [[ $(docker container inspect -f '{{.State.Running}}' "$name") == true ]] || docker start "$name" >/dev/null
    continue
  fi
  docker volume create --label "$LABEL" "$name" >/dev/null
  docker run -d --name "$name" --hostname "$name" \
    --label "$LABEL" --label redcloud.role=chunkserver \
    --network "$NETWORK" --network-alias chunkserver \
    --restart unless-stopped \
    -v "$name:/data" \
    --mount "type=bind,src=$SECRET_FILE,dst=/run/redcloud/cluster.secret,readonly" \
    "$IMAGE" --secret-file /run/redcloud/cluster.secret --controller controller:7100 \
    chunkserver --data /data --listen 0.0.0.0:7200 --advertise "$name:7200" "$@" >/dev/null
  echo "started $name"
done
for name in $(containers_of chunkserver); do
  n=${name##*-}
  if ((n > want)); then
    docker rm -f "$name" >/dev/null
    echo "removed $name (volume $name kept)"
  fi
done
