#!/usr/bin/env bash
# The main job: installs what the build needs, builds redcloud, and runs a local cluster
# (3 controllers on 127.0.0.1:7100-7102, 3 chunkservers on 127.0.0.1:7200-7202) with its data
# in ./redcloud-data. Extra arguments go to `redcloud dev` (see `redcloud dev --help`).
# The client binary is linked at ./bin/redcloud.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -p redcloud
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
mkdir -p bin
ln -sf "$target_dir/debug/redcloud" bin/redcloud
echo "client: $PWD/bin/redcloud   (export PATH=\"$PWD/bin:\$PATH\")"
exec bin/redcloud dev "$@"
