/* Types shared by the BPF programs (sshring.bpf.c) and the C++ loader. Plain C, fixed-size fields,
 * explicit padding: the layout is ABI between kernel and user space and persists in pinned maps,
 * so change it only together with kSshringAbiVersion. */
#ifndef SSHRING_BPF_SSHRING_MAPS_H
#define SSHRING_BPF_SSHRING_MAPS_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Bump when any struct below changes: the loader refuses pinned maps of another version. */
#define SSHRING_ABI_VERSION 1

/* Flow tags: same numbers as sshring::policy::FlowTag. */
#define SSHRING_TAG_PROXIED 1
#define SSHRING_TAG_APPROVED 2
#define SSHRING_TAG_EXPIRED 3
#define SSHRING_TAG_UNAPPROVED 4
#define SSHRING_NUM_TAGS 5 /* index 0 unused */

/* Candidate grants kept per source prefix; user space folds ancestors' grants into each node so one
 * longest-prefix lookup sees every grant whose source covers the address. */
#define SSHRING_MAX_RULES 16
#define SSHRING_MAX_FLOWS 65536
#define SSHRING_MAX_PREFIXES 16384
#define SSHRING_GRANT_ID_LEN 64
/* SYN retransmits of a denied connection within this window are dropped without a new event. */
#define SSHRING_DENY_WINDOW_NS (10ULL * 1000000000ULL)

/* Addresses: family 4 keeps the IPv4 address in addr[0] (the rest zero), family 6 all 16 bytes,
 * network byte order. IPv4-mapped IPv6 (::ffff:a.b.c.d) is normalized to family 4, as the policy
 * does. LPM keys start with the family word so an IPv6 ::/0 never covers IPv4 sources: prefixlen is
 * 32 + the CIDR length. */
#define SSHRING_LPM_FAMILY_BITS 32
struct sshring_lpm_key {
  __u32 prefixlen;
  __u32 family; /* 4 or 6 */
  __u32 addr[4];
};

/* A grant or static opt-out rule: destination prefix, one port range, expiry and id number. Rule sets
 * are sorted by expiry (latest first, ties: smallest id), so the first rule covering a flow is the one
 * Snapshot::classify_flow reports, and its expiry alone decides approved vs expired. */
struct sshring_rule {
  __u32 dst[4];
  __u32 dst_family;
  __u32 dst_plen; /* CIDR length in bits (0..32 or 0..128) */
  __u16 port_lo;  /* host order, inclusive */
  __u16 port_hi;
  __u32 id;           /* grant number; the name is in the grant_names map */
  __s64 expires_unix; /* seconds; live while now < expires_unix */
};

struct sshring_rule_set {
  __u32 count;
  __u32 pad;
  struct sshring_rule rules[SSHRING_MAX_RULES];
};

/* Protected destination prefix: the TCP ports of it that are SSH (bitmap would be 8 KiB; ranges
 * are plenty for ssh ports). */
#define SSHRING_MAX_PORT_RANGES 8
struct sshring_protected {
  __u32 count;
  __u16 lo[SSHRING_MAX_PORT_RANGES];
  __u16 hi[SSHRING_MAX_PORT_RANGES];
};

struct sshring_port_bitmap {
  __u8 bits[8192]; /* bit p set: TCP port p is an ssh port of some protected prefix */
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

#define SSHRING_DIR_C2S 0
#define SSHRING_DIR_S2C 1

#define SSHRING_FIN_C2S 1
#define SSHRING_FIN_S2C 2

struct sshring_flow {
  __u64 first_ns; /* bpf_ktime_get_boot_ns */
  __u64 last_ns;
  __u64 packets[2]; /* by SSHRING_DIR_* */
  __u64 bytes[2];   /* skb->len: L2 frame bytes as seen at the hook */
  __u32 grant;      /* 0: none */
  __u32 fin;        /* SSHRING_FIN_* bits seen so far */
  __u8 tag;
  __u8 pad[7];
};

#define SSHRING_EV_OPEN 1
#define SSHRING_EV_CLOSE 2
#define SSHRING_EV_DENY 3 /* enforce mode dropped the SYN */

#define SSHRING_CLOSE_FIN 1
#define SSHRING_CLOSE_RST 2
#define SSHRING_CLOSE_LOCAL 3 /* sock:inet_sock_set_state -> TCP_CLOSE */
#define SSHRING_CLOSE_IDLE 4  /* evicted by the agent (user space only) */

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

/* Indices of the per-CPU stats array: every degraded path increments one. */
enum sshring_stat {
  SSHRING_STAT_TRUNCATED = 0, /* headers shorter than they claim */
  SSHRING_STAT_FRAGMENTS,     /* IP fragments passed unparsed */
  SSHRING_STAT_V6_UNPARSED,   /* IPv6 extension header we do not walk */
  SSHRING_STAT_RINGBUF_FULL,  /* bpf_ringbuf_reserve failed: event lost */
  SSHRING_STAT_FLOW_MAP_FULL, /* flow insert failed */
  SSHRING_STAT_UNTRACKED,     /* non-SYN packet to a protected port without a flow entry */
  SSHRING_STAT_DROPPED,       /* SYNs dropped in enforce mode */
  SSHRING_STAT_CLOSED_LOCAL,  /* flows closed by the socket tracepoint */
  SSHRING_STAT_NUM,
};

#endif /* SSHRING_BPF_SSHRING_MAPS_H */
