/* Types shared by the BPF programs (sshring.bpf.c) and the C++ loader. Plain C, fixed-size fields,
 * explicit padding: the layout is ABI between kernel and user space and persists in pinned maps,
 * so change it only together with SSHRING_ABI_VERSION (sshring_consts.h). */
#ifndef SSHRING_BPF_SSHRING_STRUCTS_H
#define SSHRING_BPF_SSHRING_STRUCTS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#include "sshring_consts.h"

/* Addresses: family 4 keeps the IPv4 address in addr[0] (the rest zero), family 6 all 16 bytes,
 * network byte order. IPv4-mapped IPv6 (::ffff:a.b.c.d) is normalized to family 4, as the policy
 * does. LPM keys start with the family word so an IPv6 ::/0 never covers IPv4 sources. */
struct sshring_lpm_key {
  __u32 prefixlen; /* SSHRING_LPM_FAMILY_BITS + CIDR length */
  __u32 family;    /* 4 or 6 */
  __u32 addr[4];
};

/* A grant or static opt-out rule: destination prefix, one port range, expiry and id number. */
struct sshring_rule {
  __u32 dst[4];
  __u32 dst_family;
  __u32 dst_plen; /* CIDR length in bits (0..32 or 0..128) */
  __u16 port_lo;  /* host order, inclusive */
  __u16 port_hi;
  __u32 id;           /* grant number; the name is in the grant_names map */
  __s64 expires_unix; /* seconds; live while now < expires_unix */
};

/* Value of the `grants` trie: the candidate rules of a source prefix are rules[first, first+count)
 * of the `rules` array. User space folds every rule of every shorter prefix in and sorts them by
 * expiry (latest first, ties: smallest id), so the first rule covering a flow is the one
 * Snapshot::classify_flow reports, and its expiry alone decides approved vs expired. */
struct sshring_rule_span {
  __u32 first;
  __u32 count;
};

/* One bit per TCP port: the ssh ports of a protected prefix (value of `protected_dsts`), and their
 * union over all prefixes (`watched_ports`, a cheap pre-filter). */
struct sshring_port_bitmap {
  __u8 bits[8192]; /* bit p set: TCP port p */
};

/* Flow key, normalized to the connection's direction: client = who sent the SYN. */
struct sshring_flow_key {
  __u32 client[4];
  __u32 server[4];
  __u16 client_port; /* host order */
  __u16 server_port;
  __u8 family; /* 4 or 6 */
  __u8 pad[3];
};

struct sshring_flow {
  __u64 first_ns; /* bpf_ktime_get_boot_ns */
  __u64 last_ns;
  __u64 packets[2];   /* by SSHRING_DIR_* */
  __u64 bytes[2];     /* skb->len: L2 frame bytes as seen at the hook */
  __s64 expires_unix; /* of the rule that approved it; 0: no expiry (proxied, or not approved) */
  __u32 grant;        /* 0: none */
  __u32 fin;          /* SSHRING_FIN_* / SSHRING_RST_C2S marks seen so far */
  __u8 tag;
  __u8 origin;    /* SSHRING_ORIGIN_* */
  __u8 open_lost; /* 1: the ring buffer was full at the open event; the agent's walk reports it */
  __u8 pad[5];
};

struct sshring_event {
  __u8 type;
  __u8 tag;
  __u8 reason;
  __u8 pad;
  __u32 grant;
  struct sshring_flow_key key;
  __u64 first_ns;
  __u64 last_ns;
  __u64 packets[2];
  __u64 bytes[2];
};

struct sshring_config {
  __u32 enforce;
  __u32 abi_version;
  __s64 realtime_offset_ns; /* unix time ns = bpf_ktime_get_boot_ns() + offset */
};

struct sshring_tag_counters {
  __u64 flows;
  __u64 packets;
  __u64 bytes;
};

#endif /* SSHRING_BPF_SSHRING_STRUCTS_H */
