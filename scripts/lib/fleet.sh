# shellcheck shell=bash
# A small fleet in network namespaces, for the demo and the end-to-end test.
#
#   admin   (10.77.0.5)  ─┐   etcd: the fleet's policy store (grants)
#   client1 (10.77.0.11) ─┤
#   client2 (10.77.0.12) ─┤
#   relay   (10.77.0.2)  ─┼── bridge in namespace "sw"
#   target1 (10.77.0.21) ─┤    (every host has eth0 on it)
#   target2 (10.77.0.22) ─┘
#
# Every name carries a per-run prefix so two runs never collide, and fleet_down removes exactly
# what fleet_up made (namespaces, and with them their veths and the bridge).

FLEET_PREFIX=${FLEET_PREFIX:-"srd$$"}
FLEET_SUBNET=10.77.0
declare -A FLEET_IP=([admin]=$FLEET_SUBNET.5 [client1]=$FLEET_SUBNET.11 [client2]=$FLEET_SUBNET.12 [relay]=$FLEET_SUBNET.2
                     [target1]=$FLEET_SUBNET.21 [target2]=$FLEET_SUBNET.22)
FLEET_HOSTS=(admin client1 client2 relay target1 target2)

ns() { echo "$FLEET_PREFIX-$1"; }
in_ns() { local host=$1; shift; ip netns exec "$(ns "$host")" "$@"; }

fleet_up() {
  ip netns add "$(ns sw)"
  ip -n "$(ns sw)" link add br0 type bridge
  ip -n "$(ns sw)" link set br0 up
  local i=0
  for h in "${FLEET_HOSTS[@]}"; do
    i=$((i + 1))
    ip netns add "$(ns "$h")"
    ip -n "$(ns "$h")" link set lo up
    ip link add "${FLEET_PREFIX}v$i" type veth peer name eth0 netns "$(ns "$h")"
    ip link set "${FLEET_PREFIX}v$i" netns "$(ns sw)"
    ip -n "$(ns sw)" link set "${FLEET_PREFIX}v$i" master br0 up
    ip -n "$(ns "$h")" addr add "${FLEET_IP[$h]}/24" dev eth0
    ip -n "$(ns "$h")" link set eth0 up
  done
}

fleet_down() {
  for h in "${FLEET_HOSTS[@]}" sw; do
    ip netns del "$(ns "$h")" 2>/dev/null || true
  done
}
