#!/usr/bin/env bash
# iperf3 throughput and ping latency across a veth pair (two namespaces this script creates), with
# and without `sshring agent` attached on the server side. Worst case on purpose: the iperf3 port is
# declared an ssh port, so every iperf3 packet is parsed, looked up and counted as a tracked flow.
#
# Usage (root): bench/bpf/veth_throughput.sh [SSHRING_BIN] [SECONDS_PER_RUN] [PAIRS]
#   defaults: build/sshring, 3 s, 3 pairs (off/on alternated to cancel drift on a shared machine)
# Sample output:
#   run  agent  Gbit/s
#   1    off    18.41
#   1    on     18.02
#   ...
#   median off 18.3 Gbit/s, on 17.9 Gbit/s, ratio 0.978
#   ping rtt avg: off 0.031 ms, on 0.032 ms
set -euo pipefail
bin=${1:-build/sshring}
secs=${2:-3}
pairs=${3:-3}
[[ $(id -u) == 0 ]] || { echo "needs root" >&2; exit 77; }
command -v iperf3 >/dev/null || { echo "iperf3 missing" >&2; exit 77; }
bin=$(readlink -f "$bin")

tag="srb$$"
cli="$tag-cli"
srv="$tag-srv"
work=$(mktemp -d /tmp/sshring-bench-XXXXXX)
agent_pid=""
old_stats=""
cleanup() {
  set +e
  [[ -n $old_stats ]] && sysctl -qw kernel.bpf_stats_enabled="$old_stats"
  [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  if ip netns list | grep -q "^$srv"; then
    ip netns exec "$srv" "$bin" agent --detach --iface vs --pin-dir "$work/bpffs/pins" >/dev/null 2>&1
    [[ -f $work/iperf.pid ]] && kill "$(cat "$work/iperf.pid")" 2>/dev/null
  fi
  ip netns del "$cli" 2>/dev/null
  ip netns del "$srv" 2>/dev/null
  umount "$work/bpffs" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$cli"
ip netns add "$srv"
ip link add vc netns "$cli" type veth peer name vs netns "$srv"
ip -n "$cli" addr add 10.77.200.1/24 dev vc
ip -n "$srv" addr add 10.77.200.2/24 dev vs
for ns in "$cli" "$srv"; do ip -n "$ns" link set lo up; done
ip -n "$cli" link set vc up
ip -n "$srv" link set vs up
old_stats=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1
mkdir -p "$work/bpffs" "$work/grants"
mount -t bpf bpf "$work/bpffs"
cat >"$work/policy.yaml" <<EOF
version: 1
grant_store: $work/grants
relays: [10.77.201.0/24]
hosts:
  - name: bench
    cidrs: [10.77.200.0/24]
    ssh_ports: [5201]
EOF
ip netns exec "$srv" iperf3 -s -D -B 10.77.200.2 -I "$work/iperf.pid" >/dev/null
sleep 0.5

agent_on() {
  ip netns exec "$srv" "$bin" agent --policy "$work/policy.yaml" --iface vs --pin-dir "$work/bpffs/pins" \
    --audit-log "$work/audit.jsonl" 2>"$work/agent.log" &
  agent_pid=$!
  for _ in $(seq 50); do grep -q "agent: running" "$work/agent.log" && return 0; sleep 0.1; done
  echo "agent did not start:" >&2; cat "$work/agent.log" >&2; exit 1
}
# Per-packet cost in the real datapath, from the kernel's own accounting (kernel.bpf_stats_enabled).
prog_ns() {
  local total_ns=0 total_cnt=0
  for dir in ingress egress; do
    id=$(ip netns exec "$srv" tc filter show dev vs "$dir" | sed -n 's/.* id \([0-9]*\) name sshring_.*/\1/p' | head -1)
    [[ -n $id ]] || continue
    read -r ns cnt < <(bpftool prog show id "$id" -j | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j.get("run_time_ns",0), j.get("run_cnt",0))')
    total_ns=$((total_ns + ns)); total_cnt=$((total_cnt + cnt))
  done
  run_ns=$((run_ns + total_ns)); run_cnt=$((run_cnt + total_cnt))
}
run_ns=0 run_cnt=0
agent_off() {
  prog_ns
  kill "$agent_pid"; wait "$agent_pid" || true; agent_pid=""
  ip netns exec "$srv" "$bin" agent --detach --iface vs --pin-dir "$work/bpffs/pins" >/dev/null 2>&1
}
gbps() {
  ip netns exec "$cli" iperf3 -c 10.77.200.2 -t "$secs" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
rtt() {
  ip netns exec "$cli" ping -q -c 200 -i 0.005 10.77.200.2 | awk -F/ '/^rtt/ {print $5}'
}

off=() on=()
echo "run  agent  Gbit/s"
for i in $(seq "$pairs"); do
  v=$(gbps); off+=("$v"); echo "$i    off    $v"
  agent_on
  v=$(gbps); on+=("$v"); echo "$i    on     $v"
  agent_off
done
rtt_off=$(rtt)
agent_on
rtt_on=$(rtt)
flows=$(grep -c '"flow_open"' "$work/audit.jsonl" || true)
agent_off
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m_off=$(median "${off[@]}")
m_on=$(median "${on[@]}")
echo "median off $m_off Gbit/s, on $m_on Gbit/s, ratio $(python3 -c "print('%.3f' % ($m_on/$m_off))")"
mean() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.2f", s/NR}'; }
echo "mean off $(mean "${off[@]}") Gbit/s, on $(mean "${on[@]}") Gbit/s"
echo "ping rtt avg: off $rtt_off ms, on $rtt_on ms"
[[ $run_cnt -gt 0 ]] && echo "classifier in the datapath: $run_cnt packets, $((run_ns / run_cnt)) ns/packet (bpf_stats)"
echo "flow_open records written by the agent during the runs: $flows"
