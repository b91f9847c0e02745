#!/usr/bin/env bash
# The Debian package end to end, on this machine: scripts/package builds it once (~test1; the
# upgrade target ~test2 is that build repacked under the next version), then the .deb is checked
# (contents and modes, conffiles, Depends computed by dpkg-shlibdeps against the binary's NEEDED libraries,
# lintian, man pages render, the completion offers every command, subcommand and flag of --help),
# installed with apt, upgraded, removed and purged; afterwards the machine holds no sshring file.
# The `sshring` user stays after purge (Debian policy) and the test deletes it only if it created it.
# Versions carry ~testN, so they sort before any real 0.1.0+... package and never replace one.
#
# Needs root, dpkg-buildpackage, lintian; no network, no systemd (maintainer scripts must cope).
# Usage: package_test.sh SOURCE_DIR   (PACKAGE_TEST_DEBS=sshring_..~test1_amd64.deb skips the build:
# for iterating on this test only; CI always builds)
set -euo pipefail
src=$(cd "${1:?usage: package_test.sh SOURCE_DIR}" && pwd)
skip() {
  if [[ ${CI:-} == true ]]; then echo "FAIL (CI must not skip): $*" >&2; exit 1; fi
  echo "SKIP: $*"; exit 77
}
[[ $(id -u) -eq 0 ]] || skip "needs root (dpkg -i)"
for tool in dpkg-buildpackage lintian apt-get man; do
  command -v $tool >/dev/null || skip "$tool missing (scripts/install-deps)"
done
if dpkg-query -W -f='${Status}' sshring 2>/dev/null | grep -q installed; then
  echo "FAIL: an sshring package is installed on this machine; the test installs and purges its own" >&2
  exit 1
fi

work=$(mktemp -d "/tmp/sshring-package-test.$$.XXXX")
user_existed=0
getent passwd sshring >/dev/null && user_existed=1
cleanup() {
  if dpkg-query -W sshring >/dev/null 2>&1; then dpkg -P sshring >/dev/null 2>&1 || true; fi
  if ((!user_existed)); then
    if getent passwd sshring >/dev/null; then userdel sshring || true; fi
    if getent group sshring >/dev/null; then groupdel sshring || true; fi
  fi
  ip link del "spkg$$" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else fail "$what"; fi; }
t0=$SECONDS
phase() { echo "== $* (t=$((SECONDS - t0))s)"; }

# Everything named like sshring on the system, outside the source trees, temp dirs and the network
# namespaces other tests create (their names carry "sshring" too).
footprint() {
  find /etc /usr /lib /var /run /opt -xdev \( -path /var/tmp -o -path /var/cache/ccache -o -path /run/netns \) \
    -prune -o -name '*sshring*' -print 2>/dev/null | { grep -v "^$src" || true; } | sort
}
footprint >"$work/before"

phase "scripts/package"
b0=$SECONDS
if [[ -n ${PACKAGE_TEST_DEBS:-} && ${CI:-} != true ]]; then # iterating on this test: reuse a package
  cp "$PACKAGE_TEST_DEBS" "$work/"
  deb1=$work/$(basename "$PACKAGE_TEST_DEBS")
else
  deb=$("$src/scripts/package" --out "$work/out" --version-suffix '~test1' --no-dbgsym | tail -n1)
  deb1=$work/$(basename "$deb")
  mv "$deb" "$deb1"
fi
echo "scripts/package: $((SECONDS - b0))s"
# The upgrade target: the same build under the next version (~test2), so the test builds only once.
dpkg-deb -R "$deb1" "$work/repack"
sed -i 's/^Version: \(.*\)~test1$/Version: \1~test2/' "$work/repack/DEBIAN/control"
deb2=${deb1/~test1_/~test2_}
dpkg-deb --root-owner-group -Zxz -b "$work/repack" "$deb2" >/dev/null
rm -rf "$work/repack"
[[ -f $deb1 && -f $deb2 ]] || { echo "FAIL: scripts/package made no .deb" >&2; exit 1; }
v1=$(dpkg-deb -f "$deb1" Version)
v2=$(dpkg-deb -f "$deb2" Version)
check "versions $v1 < $v2" dpkg --compare-versions "$v1" lt "$v2"
check "version is project version + git describe + suffix" \
  grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+(\+[0-9a-z.]+)?~test1$' <<<"$v1"

phase "contents and modes"
x=$work/x
dpkg-deb -x "$deb1" "$x"
dpkg-deb -c "$deb1" | awk '{print $1, $2, $6}' >"$work/listing"
has() { grep -qxF -e "$1" "$work/listing" || { echo "  missing: $1" >&2; return 1; }; }
check "/usr/bin/sshring 0755 root" has "-rwxr-xr-x root/root ./usr/bin/sshring"
for unit in sshring-relay.service sshring-agent.service; do
  check "$unit 0644" has "-rw-r--r-- root/root ./lib/systemd/system/$unit"
  check "$unit is the one in deploy/systemd" cmp -s "$x/lib/systemd/system/$unit" "$src/deploy/systemd/$unit"
done
for f in etc/default/sshring-relay etc/default/sshring-agent etc/sshring/README usr/lib/tmpfiles.d/sshring.conf \
  usr/share/bash-completion/completions/sshring usr/share/doc/sshring/examples/policy.yaml \
  usr/share/doc/sshring/examples/relay.yaml usr/share/doc/sshring/operations.md usr/share/doc/sshring/copyright; do
  check "$f 0644" has "-rw-r--r-- root/root ./$f"
done
check "no active policy or relay config shipped" test ! -e "$x/etc/sshring/policy.yaml" -a ! -e "$x/etc/sshring/relay.yaml"
for dir in "$src"/deploy/*/; do
  name=$(basename "$dir")
  [[ $name == systemd || $name == examples ]] && continue
  (cd "$dir" && find . -type f) | while read -r f; do
    cmp -s "$dir/$f" "$x/usr/share/sshring/$name/$f" || echo "$name/$f"
  done >"$work/deploy-missing"
  check "deploy/$name under /usr/share/sshring/$name" test ! -s "$work/deploy-missing"
done
dpkg-deb -e "$deb1" "$work/control"
for f in /etc/default/sshring-relay /etc/default/sshring-agent /etc/sshring/README; do
  check "conffile $f" grep -qxF "$f" "$work/control/conffiles"
done

phase "Depends computed by dpkg-shlibdeps"
depends=$(dpkg-deb -f "$deb1" Depends)
echo "Depends: $depends"
dep_names=$(tr ',|' '\n\n' <<<"$depends" | awk '{print $1}')
has_dep() { grep -qxF -e "$1" <<<"$dep_names"; }
owner_pkg() { # the package that ships a library path (dpkg may know it under /lib or /usr/lib)
  local p real
  real=$(readlink -f "$1")
  for p in "$1" "$real" "${real#/usr}" "/usr$1"; do
    dpkg -S "$p" 2>/dev/null | head -n1 | cut -d: -f1 && return 0
  done
  return 1
}
# The cache listing goes to a file first: awk's early exit would otherwise end ldconfig with SIGPIPE,
# which pipefail turns into a failed assignment and set -e into a silent end of the test.
ldconfig -p >"$work/ldconfig"
for lib in $(objdump -p "$x/usr/bin/sshring" | awk '$1 == "NEEDED" {print $2}'); do
  path=$(awk -v l="$lib" '$1 == l && /x86-64/ {print $NF; exit}' "$work/ldconfig")
  pkg=$(owner_pkg "$path" || true)
  check "NEEDED $lib -> Depends has ${pkg:-?}" has_dep "${pkg:-no package for $lib}"
done
for pkg in libbpf1 liburing2 libssl3 adduser; do
  check "Depends has $pkg" has_dep "$pkg"
done

# lintian takes half a minute: it runs while the checks below do.
# (set +e: the subshell inherits set -e, which would end it at lintian's failure before the status is
# written, and the `wait` below would then end this script without a word.)
(
  set +e
  lintian --fail-on error,warning --display-info "$deb1" >"$work/lintian" 2>&1
  echo $? >"$work/lintian.rc"
) &
lint_pid=$!

phase "man pages and completion"
bin=$x/usr/bin/sshring
mapfile -t cmds < <("$bin" --help | awk '/^Commands:/ {on = 1; next} on && NF == 0 {exit} on {print $1}')
check "sshring --help lists commands (${#cmds[@]})" test "${#cmds[@]}" -ge 5
pages=("$x"/usr/share/man/man1/sshring.1.gz)
for c in "${cmds[@]}"; do pages+=("$(ls "$x"/usr/share/man/man[18]/sshring-"$c".[18].gz)"); done
for page in "${pages[@]}"; do
  out=$(MANWIDTH=80 man --warnings -l "$page" 2>"$work/man.err") || true
  check "man -l $(basename "$page") renders without warnings" \
    test -n "$out" -a ! -s "$work/man.err" -a "$(grep -c '^NAME' <<<"$out")" -eq 1
done
check "sshring-agent is in section 8" test -f "$x/usr/share/man/man8/sshring-agent.8.gz"
zcat "$x/usr/share/man/man1/sshring-relay.1.gz" | grep -q 'drain\\-timeout' ||
  fail "sshring-relay(1) lacks --drain-timeout from --help"
complete_words() { # complete_words WORD...: what TAB offers after `sshring WORD...`
  bash -c 'source /usr/share/bash-completion/bash_completion; source "$0"
    COMP_WORDS=(sshring "$@"); COMP_CWORD=$#; COMP_LINE="sshring $*"; COMP_POINT=${#COMP_LINE}
    _sshring; printf "%s\n" "${COMPREPLY[@]}"' \
    "$x/usr/share/bash-completion/completions/sshring" "$@" | sort
}
check "completion lists every command" diff <(printf '%s\n' "${cmds[@]}" | sort) \
  <(complete_words "" | grep -v '^-')
for c in "${cmds[@]}"; do
  help=$("$bin" "$c" --help 2>/dev/null || true)
  subs=()
  if grep -q "sshring $c SUBCOMMAND" <<<"$help"; then
    mapfile -t subs < <(complete_words "$c" "")
    check "completion: sshring $c has subcommands (${subs[*]})" test "${#subs[@]}" -ge 2
    for s in "${subs[@]}"; do
      check "completion: sshring $c $s is a subcommand" grep -q "sshring $c $s" <("$bin" "$c" "$s" --help)
    done
  fi
  for s in "" "${subs[@]}"; do
    flags=$("$bin" $c $s --help | { grep -oE '^ +--[a-z0-9][a-z0-9-]*' || true; } | tr -d ' ' | sort -u)
    [[ -z $flags ]] && continue
    check "completion: every flag of sshring $c${s:+ $s}" diff <(echo "$flags") <(complete_words $c $s -- | grep '^--')
  done
done

phase "install (apt, no network)"
apt-get install -y -q "$deb1" >"$work/apt.log" 2>&1 || { cat "$work/apt.log"; fail "apt-get install"; }
check "installed $v1" test "$(dpkg-query -W -f='${Version}' sshring)" = "$v1"
check "/usr/bin/sshring --version prints the package version ($v1)" \
  test "$(/usr/bin/sshring --version)" = "sshring $v1"
uid=$(id -u sshring)
check "system user sshring (uid $uid), group sshring" test "$uid" -lt 1000 -a "$(id -gn sshring)" = sshring
owner() { test "$(stat -c '%U:%G %a' "$1")" = "$2" || { echo "  $1: $(stat -c '%U:%G %a' "$1")" >&2; return 1; }; }
check "/var/lib/sshring/grants root:sshring 2750" owner /var/lib/sshring/grants "root:sshring 2750"
check "/var/log/sshring root:root 750" owner /var/log/sshring "root:root 750"
check "/var/log/sshring-relay sshring:sshring 750" owner /var/log/sshring-relay "sshring:sshring 750"
check "/run/sshring sshring:sshring 750" owner /run/sshring "sshring:sshring 750"
check "units not enabled" test -z "$(find /etc/systemd/system -name 'sshring*' 2>/dev/null)"
# No process runs the installed binary (other tests run build trees' sshring, never /usr/bin's).
none_running() {
  for p in /proc/[0-9]*; do [[ $(readlink "$p/exe" 2>/dev/null) == /usr/bin/sshring ]] && return 1; done
  return 0
}
check "nothing started" none_running

phase "upgrade $v1 -> $v2"
echo "SSHRING_AGENT_IFACE=eth1  # admin edit" >>/etc/default/sshring-agent
cp /usr/share/doc/sshring/examples/policy.yaml /etc/sshring/policy.yaml
echo "{}" >/var/lib/sshring/grants/test.grant
echo "{}" >/var/log/sshring/agent.audit.jsonl
dpkg -i "$deb2" >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "dpkg -i $deb2"; }
cat "$work/upgrade.log"
check "upgraded to $v2" test "$(dpkg-query -W -f='${Version}' sshring)" = "$v2"
check "admin's /etc/default edit kept" grep -q "admin edit" /etc/default/sshring-agent
check "policy, grant store and logs kept" test -f /etc/sshring/policy.yaml -a -f /var/lib/sshring/grants/test.grant \
  -a -f /var/log/sshring/agent.audit.jsonl
check "same uid after upgrade" test "$(id -u sshring)" = "$uid"
check "no systemd: nothing (re)started" none_running

# Removal must not leave the agent's tc programs behind (they outlive the agent by design, and with
# --enforce they would keep dropping SSH): attach a real agent to a veth of our own, stop it (programs
# stay), then let the package's prerm detach them.
phase "remove detaches the agent"
veth=spkg$$
agent_ran=0
if [[ -e /sys/kernel/btf/vmlinux ]] && mountpoint -q /sys/fs/bpf && [[ ! -e /sys/fs/bpf/sshring ]]; then
  ip link add "$veth" type veth peer name "${veth}p"
  ip link set "$veth" up
  /usr/bin/sshring agent --policy /etc/sshring/policy.yaml --iface "$veth" \
    --audit-log "$work/agent.audit.jsonl" >"$work/agent.log" 2>&1 &
  apid=$!
  attached() { tc filter show dev "$veth" ingress 2>/dev/null | grep -q sshring; }
  for _ in $(seq 100); do
    attached && break
    sleep 0.3
  done
  kill -TERM "$apid"
  wait "$apid" || true
  agent_ran=1
  check "agent attached to $veth and left its programs on exit" attached
  attached || cat "$work/agent.log"
  echo "SSHRING_AGENT_IFACE=$veth" >>/etc/default/sshring-agent
else
  [[ ${CI:-} == true ]] && fail "no BTF, no bpffs or /sys/fs/bpf/sshring in use: cannot check detach"
  echo "skip: detach check (no BTF, no bpffs, or /sys/fs/bpf/sshring already in use)"
fi

phase "remove, purge"
dpkg -r sshring >"$work/remove.log" 2>&1 || { cat "$work/remove.log"; fail "dpkg -r"; }
check "remove: binary gone" test ! -e /usr/bin/sshring
if ((agent_ran)); then
  detached() { ! attached; }
  check "remove: agent programs detached from $veth" detached
  check "remove: agent pins gone" test ! -e /sys/fs/bpf/sshring
  ip link del "$veth"
fi
check "remove: conffiles, logs, grant store kept" test -f /etc/default/sshring-agent -a -f /var/log/sshring/agent.audit.jsonl \
  -a -f /var/lib/sshring/grants/test.grant
dpkg -P sshring >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "dpkg -P"; }
check "purge: package gone" bash -c '! dpkg-query -W sshring 2>/dev/null'
check "purge: user and group sshring kept (Debian policy)" getent passwd sshring
footprint >"$work/after"
# Only what was not there before counts: other tests running alongside may have made (and purge
# may then remove) the package's own directories before this test started.
left_behind() { comm -13 "$work/before" "$work/after"; }
check "purge: no sshring file left on the machine" test -z "$(left_behind)"
left_behind

phase "lintian"
wait "$lint_pid" || true
grep -v 'root privileges' "$work/lintian" || true
check "lintian: no errors, no warnings (overrides in debian/sshring.lintian-overrides)" test "$(cat "$work/lintian.rc")" -eq 0

echo "package test: $((SECONDS - t0))s, $fails failure(s)"
((fails == 0))
