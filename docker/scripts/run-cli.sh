#!/usr/bin/env bash
# Runs the redcloud CLI in a container on `dfs-network`: with no arguments an interactive
# shell, with arguments that one command (`run-cli.sh add notes.txt --tag docs`). The current
# directory is mounted as the working directory, so `add FILE` and `download -o FILE` work on
# your files (give paths relative to it); standard input passes through (`--password-stdin`);
# the login persists in $REDCLOUD_CLI_HOME (default ~/.redcloud-docker). The CLI verifies the
# cluster with docker/ca.pem; when you can read the cluster secret it is mounted too, for
# operator commands (drain, set-replication, cluster-wide status).
source "$(dirname "$0")/lib.sh"
need_network
[[ -f $CA_FILE ]] || die "no CA certificate at $CA_FILE: run docker/scripts/build-images.sh first"
args=("$@")
((${#args[@]})) || args=(shell)
home="${REDCLOUD_CLI_HOME:-$HOME/.redcloud-docker}"
mkdir -p "$home" && chmod 700 "$home"
flags=(-i)
[[ -t 0 && -t 1 ]] && flags+=(-t)
mounts=(-v "$PWD:/work" -w /work -v "$home:/home/redcloud"
  --mount "type=bind,src=$CA_FILE,dst=/run/redcloud/ca.pem,readonly")
global=(--controller "${REDCLOUD_CLI_CONTROLLER:-controller:7100}" --ca-file /run/redcloud/ca.pem)
if [[ -r $SECRET_FILE ]]; then
  mounts+=(--mount "type=bind,src=$SECRET_FILE,dst=/run/redcloud/cluster.secret,readonly")
  global+=(--secret-file /run/redcloud/cluster.secret)
fi
exec docker run --rm "${flags[@]}" --network "${REDCLOUD_CLI_NETWORK:-$NETWORK}" \
  --user "$(id -u):$(id -g)" -e REDCLOUD_HOME=/home/redcloud \
  --label "$LABEL" "${mounts[@]}" "$IMAGE" "${global[@]}" "${args[@]}"
