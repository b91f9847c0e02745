#!/bin/sh
# Checks deploy/systemd units with systemd-analyze verify (any diagnostic fails the test) and that the
# hardening the runbook promises is present. Usage: systemd_verify.sh SOURCE_DIR SSHRING_BIN
# Exit 77 (skipped) when systemd-analyze is not installed.
set -u
src=$1
bin=$2
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "SKIP: systemd-analyze not installed (apt-get install systemd)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
for unit in "$src"/deploy/systemd/*.service; do
  name=$(basename "$unit")
  # verify insists the ExecStart binary exists: point it at the one we built.
  sed "s|/usr/bin/sshring|$bin|g" "$unit" >"$tmp/$name"
  out=$(systemd-analyze verify "$tmp/$name" 2>&1)
  rc=$?
  if [ $rc -ne 0 ] || [ -n "$out" ]; then
    echo "FAIL $name: systemd-analyze verify (rc=$rc):"
    echo "$out"
    fail=1
  fi
  for key in NoNewPrivileges=yes LimitNOFILE=1048576 ProtectSystem=strict Restart= CapabilityBoundingSet=; do
    grep -q "^$key" "$unit" || { echo "FAIL $name: missing $key"; fail=1; }
  done
done
grep -q '^CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE$' "$src/deploy/systemd/sshring-agent.service" ||
  { echo "FAIL agent: capabilities must be exactly CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_SYS_RESOURCE"; fail=1; }
grep -q '^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$' "$src/deploy/systemd/sshring-relay.service" ||
  { echo "FAIL relay: capabilities must be only CAP_NET_BIND_SERVICE"; fail=1; }
[ $fail -eq 0 ] && echo "OK: systemd units verified"
exit $fail
