#!/bin/sh
# Least-privilege etcd roles and users for one sshring fleet (docs/etcd.md).
#
#   ETCDCTL_ENDPOINTS=https://10.0.0.1:2379 ETCDCTL_CACERT=ca.pem ETCDCTL_CERT=root.pem \
#   ETCDCTL_KEY=root-key.pem deploy/etcd/roles.sh [--prefix /sshring] [--enable-auth]
#
# Runs etcdctl as an existing root (or, before auth is on, as anyone) and is idempotent: roles and
# users that exist are updated, not duplicated. Users have no password: they authenticate with TLS
# client certificates whose CN is the user name (etcd --client-cert-auth).
#
#   role                    keys (PREFIX = --prefix)                     who
#   sshring-agent           read PREFIX/                                 every agent    (user sshring-agent)
#   sshring-relay           read PREFIX/, readwrite PREFIX/sessions/      every relay    (user sshring-relay)
#   sshring-grant-writer    read PREFIX/, readwrite PREFIX/grants/ and    grant add|revoke (user sshring-grant)
#                           PREFIX/leases/
#   sshring-policy-writer   read PREFIX/, readwrite PREFIX/policy/        policy push    (user sshring-policy)
#
# --enable-auth also creates the root user (CN root) with the root role and turns auth on.
set -eu

prefix=/sshring
enable_auth=no
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --enable-auth) enable_auth=yes; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "roles.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$prefix" in
  /*) ;;
  *) echo "roles.sh: --prefix must start with / (e.g. /sshring)" >&2; exit 2 ;;
esac
prefix="${prefix%/}"

ctl() { etcdctl "$@" >/dev/null; }

role() {  # role NAME [PERM KEYPREFIX]...
  name="$1"; shift
  etcdctl role get "$name" >/dev/null 2>&1 || ctl role add "$name"
  while [ $# -gt 0 ]; do
    ctl role grant-permission --prefix=true "$name" "$1" "$2"
    shift 2
  done
}

user() {  # user NAME ROLE
  etcdctl user get "$1" >/dev/null 2>&1 || ctl user add "$1" --no-password
  ctl user grant-role "$1" "$2"
}

role sshring-agent read "$prefix/"
role sshring-relay read "$prefix/" readwrite "$prefix/sessions/"
role sshring-grant-writer read "$prefix/" readwrite "$prefix/grants/" readwrite "$prefix/leases/"
role sshring-policy-writer read "$prefix/" readwrite "$prefix/policy/"
user sshring-agent sshring-agent
user sshring-relay sshring-relay
user sshring-grant sshring-grant-writer
user sshring-policy sshring-policy-writer

if [ "$enable_auth" = yes ]; then
  etcdctl user get root >/dev/null 2>&1 || ctl user add root --no-password
  ctl user grant-role root root
  ctl auth enable
fi
echo "sshring etcd roles set up under $prefix/"
