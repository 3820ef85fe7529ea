#!/usr/bin/env bash
# Builds the image `redcloud:latest` with no container registry: a `FROM scratch` image holding
# the redcloud binary and exactly the shared libraries it links (from this host). The binary:
# $REDCLOUD_BIN, else the newest of the release and dev builds (`cargo build --release -p
# redcloud` makes one). With a registry, docker/Dockerfile is the conventional multi-stage
# build instead. Also makes, once, the cluster secret (docker/cluster.secret, mode 0600) and
# its CA certificate (docker/ca.pem) that the other scripts mount into containers.
source "$(dirname "$0")/lib.sh"
root="$(cd "$DOCKER_DIR/.." && pwd)"
bin="${REDCLOUD_BIN:-}"
if [[ -z $bin ]]; then
  target="${CARGO_TARGET_DIR:-$(cd "$root" && cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}"
  for b in "$target/release/redcloud" "$target/debug/redcloud"; do
    [[ -x $b && ( -z $bin || $b -nt $bin ) ]] && bin=$b
  done
  [[ -n $bin ]] || die "no redcloud binary: run 'cargo build --release -p redcloud' (or set REDCLOUD_BIN)"
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/rootfs/tmp" "$stage/rootfs/data" "$stage/rootfs/etc"
# Debug information is not needed in a container; the image stays small.
objcopy --strip-debug "$bin" "$stage/rootfs/redcloud" 2>/dev/null || cp "$bin" "$stage/rootfs/redcloud"
# The shared libraries the binary links, and the dynamic loader, at their own paths.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$stage/rootfs$(dirname "$lib")"
  cp -L "$lib" "$stage/rootfs$lib"
done
printf 'hosts: files dns\n' >"$stage/rootfs/etc/nsswitch.conf"
cp "$DOCKER_DIR/Dockerfile.scratch" "$stage/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" --label "$LABEL" "$stage" >/dev/null
echo "built $IMAGE from $bin ($(docker image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}'))"
if [[ ! -f $SECRET_FILE ]]; then
  "$bin" secret --output "$SECRET_FILE"
fi
"$bin" --secret-file "$SECRET_FILE" ca >"$CA_FILE"
echo "cluster secret $SECRET_FILE, CA certificate $CA_FILE"
