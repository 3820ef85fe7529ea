#!/usr/bin/env bash
# netns-lab: a throw-away network of "hosts" made of Linux network namespaces, for trying
# redcloud under real network faults. The fault tests (cli/tests/netns_faults.rs) drive it, and
# an operator can use it directly (as root; `redcloud` is target/debug/redcloud or bin/redcloud):
#
#   L="scripts/netns-lab.sh --lab demo"
#   $L up 3; mkdir -p /tmp/demo                  # hosts rcl-demo-h1..h3 at 10.77.0.1..3
#   for i in 1 2 3; do ip=10.77.0.$i
#     $L exec $i redcloud controller --data /tmp/demo/ctl$i --listen $ip:7100 \
#       --advertise $ip:7100 --p2p-listen /ip4/$ip/tcp/7300 >/tmp/demo/ctl$i.log 2>&1 &
#     $L exec $i redcloud chunkserver --data /tmp/demo/cs$i --listen $ip:7200 \
#       --controller $ip:7100 >/tmp/demo/cs$i.log 2>&1 &
#   done                                         # controllers find each other by mDNS
#   $L exec 1 redcloud --controller 10.77.0.1:7100 status
#   $L partition 1 "2 3"                         # host 1 cut off from hosts 2 and 3
#   $L heal
#   $L lossy 2 10.77.0.3 30                      # host 2 <-> 10.77.0.3: 30% dropped each way
#   $L oneway 2 10.77.0.3                        # host 2 can no longer send to .3
#   $L clear-faults
#   $L down                                      # stops what runs inside, deletes it all
#
# Topology. Every name starts with "rcl-LAB-", so labs running side by side never collide.
#   rcl-LAB-br    the switch: bridges br1 (the normal network), br2, br3, ... (partition sides).
#                 It has no uplink, so nothing sent inside the lab can reach the machine's own
#                 network or the outside world.
#   rcl-LAB-hI    host I (1-based): loopback up, eth0 = 10.77.0.I/24, a route for multicast
#                 (224.0.0.0/4) so mDNS works; eth0's other end is port hI on a bridge.
# The addresses exist only inside the lab (no default route), so the same /24 in two labs
# never meets.
#
# A partition moves each host's port to the bridge of its group: group 1 to br1, group 2 to
# br2, ...; hosts named in no group stay on br1. Open TCP connections are not reset, packets
# just stop arriving, as on a real cut. `heal` moves every port back to br1.
# Link faults are nftables rules in table `inet redcloud_lab` inside a host.
set -euo pipefail

SUBNET_PREFIX="10.77.0"
LAB="${REDCLOUD_LAB:-}"

usage() {
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
  cat >&2 <<'EOF'
Commands: up N | down | hosts | ip HOST | ns HOST | exec HOST CMD... | partition GROUP...
          | heal | lossy HOST PEER_IP PERCENT | oneway HOST PEER_IP | clear-faults [HOST]
Options:  --lab ID (or $REDCLOUD_LAB): the lab's name, letters, digits and '-' (default "lab")
EOF
  exit 2
}

die() {
  echo "netns-lab: $*" >&2
  exit 1
}

switch_ns() { echo "rcl-$LAB-br"; }
host_ns() { echo "rcl-$LAB-h$1"; }
host_ip() { echo "$SUBNET_PREFIX.$1"; }

# Host numbers of this lab, ascending.
hosts() {
  ip netns list | awk '{print $1}' | sed -n "s/^rcl-$LAB-h\([0-9][0-9]*\)\$/\1/p" | sort -n
}

require_host() {
  [[ "$1" =~ ^[0-9]+$ ]] || die "host must be a number, got '$1'"
  ip netns list | awk '{print $1}' | grep -qx "$(host_ns "$1")" ||
    die "lab '$LAB' has no host $1 (run: $0 --lab $LAB up N)"
}

require_ip() {
  [[ "$1" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "not an IPv4 address: '$1'"
}

ensure_bridge() {
  local br="br$1"
  if ! ip -n "$(switch_ns)" link show "$br" >/dev/null 2>&1; then
    # Multicast snooping off: the bridge floods multicast, so mDNS reaches every port.
    ip -n "$(switch_ns)" link add "$br" type bridge mcast_snooping 0 stp_state 0 forward_delay 0
    ip -n "$(switch_ns)" link set "$br" up
  fi
}

cmd_up() {
  local n="${1:-}"
  [[ "$n" =~ ^[0-9]+$ ]] && ((n >= 1 && n <= 250)) || die "up needs a host count 1..250"
  local sw
  sw="$(switch_ns)"
  ip netns list | awk '{print $1}' | grep -qx "$sw" && die "lab '$LAB' is already up"
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ensure_bridge 1
  local i h
  for ((i = 1; i <= n; i++)); do
    h="$(host_ns "$i")"
    ip netns add "$h"
    ip -n "$h" link set lo up
    # Both ends are created inside namespaces, so no name ever appears in the root namespace.
    ip -n "$sw" link add "h$i" type veth peer name eth0 netns "$h"
    ip -n "$sw" link set "h$i" master br1
    ip -n "$sw" link set "h$i" up
    ip -n "$h" addr add "$(host_ip "$i")/24" dev eth0
    ip -n "$h" link set eth0 multicast on up
    ip -n "$h" route add 224.0.0.0/4 dev eth0
  done
  echo "lab $LAB: $n hosts, $(host_ip 1)..$(host_ip "$n") (namespaces rcl-$LAB-h1..h$n)"
}

# Stops whatever still runs inside the lab's namespaces (by pid: SIGTERM, then SIGKILL after
# 5 s), then deletes the namespaces.
cmd_down() {
  local ns all=() pids i
  local names
  names="$(ip netns list | awk '{print $1}' | grep "^rcl-$LAB-\(br\|h[0-9]*\)\$" || true)"
  for ns in $names; do
    # shellcheck disable=SC2207
    all+=($(ip netns pids "$ns" 2>/dev/null || true))
  done
  if ((${#all[@]})); then
    kill -TERM "${all[@]}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pids=()
      for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && pids+=("$p"); done
      ((${#pids[@]})) || break
      sleep 0.1
    done
    ((${#pids[@]})) && kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  for ns in $names; do
    ip netns del "$ns" 2>/dev/null || true
  done
}

cmd_partition() {
  (($# >= 1)) || die "partition needs at least one group of hosts, e.g. partition 1 \"2 3\""
  local h g=1 group
  declare -A side=()
  for group in "$@"; do
    for h in $group; do
      require_host "$h"
      [[ -z "${side[$h]:-}" ]] || die "host $h is named in two groups"
      side[$h]=$g
    done
    g=$((g + 1))
  done
  for h in $(hosts); do
    g="${side[$h]:-1}"
    ensure_bridge "$g"
    ip -n "$(switch_ns)" link set "h$h" master "br$g"
  done
}

cmd_heal() {
  local h
  for h in $(hosts); do
    ip -n "$(switch_ns)" link set "h$h" master br1
  done
}

# Creates the host's fault table (empty chains hooked on input and output) when missing.
fault_table() {
  ip netns exec "$(host_ns "$1")" nft -f - <<'EOF'
table inet redcloud_lab {
  chain input { type filter hook input priority 0; policy accept; }
  chain output { type filter hook output priority 0; policy accept; }
}
EOF
}

cmd_lossy() {
  (($# == 3)) || die "lossy HOST PEER_IP PERCENT"
  require_host "$1"
  require_ip "$2"
  [[ "$3" =~ ^[0-9]+$ ]] && (($3 <= 100)) || die "percent must be 0..100"
  fault_table "$1"
  # Each packet, in each direction, is dropped with probability PERCENT/100.
  ip netns exec "$(host_ns "$1")" nft -f - <<EOF
add rule inet redcloud_lab input ip saddr $2 numgen random mod 100 < $3 drop
add rule inet redcloud_lab output ip daddr $2 numgen random mod 100 < $3 drop
EOF
}

cmd_oneway() {
  (($# == 2)) || die "oneway HOST PEER_IP"
  require_host "$1"
  require_ip "$2"
  fault_table "$1"
  # HOST's packets to PEER are dropped; PEER's packets to HOST still arrive.
  ip netns exec "$(host_ns "$1")" nft add rule inet redcloud_lab output ip daddr "$2" drop
}

cmd_clear_faults() {
  local h
  for h in ${1:-$(hosts)}; do
    require_host "$h"
    ip netns exec "$(host_ns "$h")" nft delete table inet redcloud_lab 2>/dev/null || true
  done
}

main() {
  while (($#)); do
    case "$1" in
      --lab)
        (($# >= 2)) || usage
        LAB="$2"
        shift 2
        ;;
      -h | --help) usage ;;
      *) break ;;
    esac
  done
  (($#)) || usage
  LAB="${LAB:-lab}"
  [[ "$LAB" =~ ^[A-Za-z0-9-]{1,24}$ ]] || die "lab id must be 1..24 letters, digits or '-'"
  [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces)"
  command -v ip >/dev/null || die "iproute2 ('ip') is not installed (scripts/setup.sh)"
  local cmd="$1"
  shift
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    hosts) hosts ;;
    ip)
      require_host "${1:-}"
      host_ip "$1"
      ;;
    ns)
      require_host "${1:-}"
      host_ns "$1"
      ;;
    exec)
      require_host "${1:-}"
      local h="$1"
      shift
      exec ip netns exec "$(host_ns "$h")" "$@"
      ;;
    partition) cmd_partition "$@" ;;
    heal) cmd_heal ;;
    lossy | oneway | clear-faults)
      command -v nft >/dev/null || die "nftables ('nft') is not installed (scripts/setup.sh)"
      "cmd_${cmd//-/_}" "$@"
      ;;
    *) usage ;;
  esac
}

main "$@"
