# Shared by the deployment scripts: names, paths, and the docker command.
# Everything these scripts create carries the label `redcloud.deployment`, so teardown.sh
# removes exactly that.
set -euo pipefail
DOCKER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NETWORK="${REDCLOUD_NETWORK:-dfs-network}"
IMAGE="${REDCLOUD_IMAGE:-redcloud:latest}"
# The cluster secret and the CA certificate derived from it (build-images.sh makes both once;
# containers get them mounted read-only, never baked into an image).
SECRET_FILE="${REDCLOUD_SECRET_FILE_HOST:-$DOCKER_DIR/cluster.secret}"
CA_FILE="${REDCLOUD_CA_FILE_HOST:-$DOCKER_DIR/ca.pem}"
LABEL="redcloud.deployment=1"
# Containers and volumes are named PREFIX-ROLE-N. On several hosts give each host its own
# prefix (REDCLOUD_NODE_PREFIX=redcloud-b), so names stay unique on the overlay.
PREFIX="${REDCLOUD_NODE_PREFIX:-redcloud}"
docker() { command docker "$@"; }
die() { echo "error: $*" >&2; exit 1; }
need_secret() {
  [[ -f $SECRET_FILE ]] || die "no cluster secret at $SECRET_FILE: run docker/scripts/build-images.sh first"
}
need_network() {
  docker network inspect "$NETWORK" >/dev/null 2>&1 || die "no network $NETWORK: run docker/scripts/init-network.sh first"
}
# Names of the containers of one role (controller, chunkserver), in order of their number.
containers_of() {
  docker ps -a --filter "label=redcloud.role=$1" --format '{{.Names}}' | grep "^$PREFIX-$1-[0-9]*$" | sort -V
}
# The first free number N for `PREFIX-ROLE-N` (so a removed node's name and volume are reused).
next_index() {
  local role=$1 n=1
  while docker container inspect "$PREFIX-$role-$n" >/dev/null 2>&1; do n=$((n + 1)); done
  echo "$n"
}
