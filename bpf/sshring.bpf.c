// SPDX-License-Identifier: GPL-2.0
/* TC clsact classifier for direct SSH flows: tags each inbound connection at its SYN (proxied,
 * bypass_approved, bypass_expired, bypass_unapproved), counts it per flow and per tag, and reports
 * open/close through a ring buffer.
 *
 * Count mode drops nothing. Enforce mode fails closed on ingress: a packet reaches a protected port
 * only as part of a flow classified proxied or bypass_approved. Dropped: SYNs tagged expired or
 * unapproved; non-SYN packets without a flow entry; packets of a flow whose grant expired (checked
 * per packet in kernel time) or that the agent re-tagged; and TCP fragments, truncated headers and
 * IPv6 packets whose transport header we do not reach, when their destination is a protected address.
 * Every such path is counted in both modes. Returns TC_ACT_UNSPEC for what it passes, so later
 * filters on the hook still run. */
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "sshring_structs.h"

char LICENSE[] SEC("license") = "GPL";

#define TC_ACT_UNSPEC (-1)
#define TC_ACT_SHOT 2
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58
#define IPPROTO_NONE 59
#define TCP_CLOSE 7
#define EPIPE 32
#define ECONNRESET 104

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct sshring_config);
} agent_config SEC(".maps");

/* Protected destination prefix -> its ssh ports. */
struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, SSHRING_MAX_PREFIXES);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct sshring_lpm_key);
  __type(value, struct sshring_port_bitmap);
} protected_dsts SEC(".maps");

/* Union of all protected ports: one array lookup rejects most non-SSH traffic. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct sshring_port_bitmap);
} watched_ports SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, SSHRING_MAX_PREFIXES);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct sshring_lpm_key);
  __type(value, __u32);
} relays SEC(".maps");

/* Source prefix -> its span of candidate rules in `rules`. */
struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, SSHRING_MAX_PREFIXES);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct sshring_lpm_key);
  __type(value, struct sshring_rule_span);
} grants SEC(".maps");

/* Candidate rules, two halves (user space writes a new policy into the half no span points to,
 * then moves the spans). The loader sizes it from the policy before load. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 2 * SSHRING_DEFAULT_MAX_RULES);
  __type(key, __u32);
  __type(value, struct sshring_rule);
} rules SEC(".maps");

/* Grant number -> grant id string; written and read by user space only (survives restarts). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, SSHRING_MAX_GRANT_NAMES);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, __u32);
  __type(value, char[SSHRING_GRANT_ID_LEN]);
} grant_names SEC(".maps");

/* ifindex -> 1 if the agent created the clsact qdisc there (so detach removes only that). */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, SSHRING_MAX_IFACES);
  __type(key, __u32);
  __type(value, __u32);
} ifaces SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, SSHRING_MAX_FLOWS);
  __type(key, struct sshring_flow_key);
  __type(value, struct sshring_flow);
} flows SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, SSHRING_NUM_TAGS);
  __type(key, __u32);
  __type(value, struct sshring_tag_counters);
} tag_stats SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, SSHRING_STAT_NUM);
  __type(key, __u32);
  __type(value, __u64);
} stats SEC(".maps");

/* Flows whose SYN enforce mode dropped -> when (boot ns), to report retransmits once. */
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, SSHRING_MAX_DENIED);
  __type(key, struct sshring_flow_key);
  __type(value, __u64);
} denied SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, SSHRING_RINGBUF_BYTES);
} events SEC(".maps");

static __always_inline void stat_inc(__u32 idx) {
  __u64* v = bpf_map_lookup_elem(&stats, &idx);
  if (v) *v += 1; /* per-CPU: no atomics needed */
}

static __always_inline void tag_add(__u8 tag, __u64 flows_n, __u64 bytes) {
  __u32 idx = tag;
  struct sshring_tag_counters* c = bpf_map_lookup_elem(&tag_stats, &idx);
  if (!c) return;
  c->flows += flows_n;
  c->packets += 1;
  c->bytes += bytes;
}

static __always_inline const struct sshring_config* agent_cfg(void) {
  __u32 zero = 0;
  return bpf_map_lookup_elem(&agent_config, &zero);
}

static __always_inline int enforce_on(void) {
  const struct sshring_config* cfg = agent_cfg();
  return cfg && cfg->enforce;
}

/* Unix time in ns, in kernel time: expiry needs no user space. */
static __always_inline __s64 now_unix_ns(void) {
  const struct sshring_config* cfg = agent_cfg();
  return (__s64)bpf_ktime_get_boot_ns() + (cfg ? cfg->realtime_offset_ns : 0);
}

static __always_inline int tag_allowed(__u8 tag) {
  return tag == SSHRING_TAG_PROXIED || tag == SSHRING_TAG_APPROVED;
}

/* Packet fields the classifier needs, parsed once. family/src/dst are set as soon as the IP header
 * is read, so a packet that fails later can still be matched against protected addresses. */
struct pkt {
  __u8 family;
  __u32 src[4];
  __u32 dst[4];
  __u16 sport;
  __u16 dport;
  __u8 flags; /* TCP flags byte: FIN=0x01 SYN=0x02 RST=0x04 ACK=0x10 */
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

enum parse_result { PARSE_OK, PARSE_SKIP, PARSE_TRUNCATED, PARSE_FRAGMENT, PARSE_V6_UNPARSED };

static __always_inline void set_v4(__u32 out[4], __u32 addr) {
  out[0] = addr;
  out[1] = 0;
  out[2] = 0;
  out[3] = 0;
}

/* ::ffff:a.b.c.d is an IPv4 peer on a dual-stack socket: the policy treats it as IPv4. */
static __always_inline int is_v4_mapped(const __u32 a[4]) {
  return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void unmap_v4(__u32 a[4]) {
  a[0] = a[3];
  a[2] = 0;
  a[3] = 0;
}

static __always_inline int parse_tcp(void* pos, void* end, struct pkt* p) {
  struct tcphdr* th = pos;
  if ((void*)(th + 1) > end) return PARSE_TRUNCATED;
  if (th->doff < 5) return PARSE_TRUNCATED;
  p->sport = bpf_ntohs(th->source);
  p->dport = bpf_ntohs(th->dest);
  p->flags = ((__u8*)th)[13];
  return PARSE_OK;
}

static __always_inline int parse_v4(void* pos, void* end, struct pkt* p) {
  struct iphdr* ip = pos;
  if ((void*)(ip + 1) > end) return PARSE_TRUNCATED;
  if (ip->protocol != IPPROTO_TCP) return PARSE_SKIP;
  p->family = 4;
  set_v4(p->src, ip->saddr);
  set_v4(p->dst, ip->daddr);
  __u32 hl = ip->ihl * 4;
  if (hl < sizeof(*ip)) return PARSE_TRUNCATED;
  /* Any fragment, first or later: the transport header may be split or absent. */
  if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) return PARSE_FRAGMENT;
  if (pos + hl > end) return PARSE_TRUNCATED;
  return parse_tcp(pos + hl, end, p);
}

/* IPv6 extension headers: hop-by-hop, routing, destination options and AH are walked (up to
 * SSHRING_MAX_V6_EXT); a fragment header (atomic ones too) carrying TCP or a further header is a
 * fragment; ESP and unknown headers are unparsed. */
static __always_inline int parse_v6_ext(void* pos, void* end, __u8 next, struct pkt* p) {
#pragma unroll
  for (int i = 0; i < SSHRING_MAX_V6_EXT; i++) {
    if (next == IPPROTO_TCP) return parse_tcp(pos, end, p);
    if (next == IPPROTO_UDP || next == IPPROTO_ICMPV6 || next == IPPROTO_NONE) return PARSE_SKIP;
    struct ipv6_opt_hdr* oh = pos;
    if ((void*)(oh + 1) > end) return PARSE_TRUNCATED;
    __u32 len;
    if (next == 0 /* hop-by-hop */ || next == 43 /* routing */ || next == 60 /* dest opts */) {
      len = ((__u32)oh->hdrlen + 1) * 8;
    } else if (next == 51 /* AH */) {
      len = ((__u32)oh->hdrlen + 2) * 4;
    } else if (next == 44 /* fragment */) {
      __u8 inner = oh->nexthdr;
      return inner == IPPROTO_UDP || inner == IPPROTO_ICMPV6 ? PARSE_SKIP : PARSE_FRAGMENT;
    } else {
      return PARSE_V6_UNPARSED; /* ESP, mobility, unknown: cannot see the transport header */
    }
    if (pos + len > end) return PARSE_TRUNCATED;
    next = oh->nexthdr;
    pos += len;
  }
  if (next == IPPROTO_TCP) return parse_tcp(pos, end, p);
  if (next == IPPROTO_UDP || next == IPPROTO_ICMPV6 || next == IPPROTO_NONE) return PARSE_SKIP;
  return PARSE_V6_UNPARSED;
}

static __always_inline int parse_v6(void* pos, void* end, struct pkt* p) {
  struct ipv6hdr* ip6 = pos;
  if ((void*)(ip6 + 1) > end) return PARSE_TRUNCATED;
  __builtin_memcpy(p->src, &ip6->saddr, 16);
  __builtin_memcpy(p->dst, &ip6->daddr, 16);
  p->family = 6;
  if (is_v4_mapped(p->src) && is_v4_mapped(p->dst)) {
    p->family = 4;
    unmap_v4(p->src);
    unmap_v4(p->dst);
  }
  return parse_v6_ext(ip6 + 1, end, ip6->nexthdr, p);
}

static __always_inline int parse(struct __sk_buff* skb, struct pkt* p) {
  void* end = (void*)(long)skb->data_end;
  void* pos = (void*)(long)skb->data;
  struct ethhdr* eth = pos;
  if ((void*)(eth + 1) > end) return PARSE_TRUNCATED;
  pos = eth + 1;
  __u16 proto = eth->h_proto;
#pragma unroll
  for (int i = 0; i < 2; i++) {
    if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD)) break;
    struct vlan_hdr* vh = pos;
    if ((void*)(vh + 1) > end) return PARSE_TRUNCATED;
    proto = vh->h_vlan_encapsulated_proto;
    pos = vh + 1;
  }
  if (proto == bpf_htons(ETH_P_IP)) return parse_v4(pos, end, p);
  if (proto == bpf_htons(ETH_P_IPV6)) return parse_v6(pos, end, p);
  return PARSE_SKIP;
}

/* Headers beyond the linear area: pull them in once and parse again. */
static __always_inline int parse_pulled(struct __sk_buff* skb, struct pkt* p) {
  int r = parse(skb, p);
  if (r == PARSE_TRUNCATED && skb->len > skb->data_end - skb->data) {
    if (bpf_skb_pull_data(skb, skb->len < 256 ? skb->len : 256) == 0) {
      __builtin_memset(p, 0, sizeof(*p));
      r = parse(skb, p);
    }
  }
  return r;
}

static __always_inline void lpm_host_key(struct sshring_lpm_key* k, __u8 family, const __u32 a[4]) {
  k->prefixlen = SSHRING_LPM_FAMILY_BITS + (family == 4 ? 32 : 128);
  k->family = family;
  __builtin_memcpy(k->addr, a, 16);
}

static __always_inline int port_bit(const struct sshring_port_bitmap* bm, __u16 port) {
  return bm && (bm->bits[(port >> 3) & 8191] & (1 << (port & 7)));
}

static __always_inline int port_watched(__u16 port) {
  __u32 zero = 0;
  return port_bit(bpf_map_lookup_elem(&watched_ports, &zero), port);
}

static __always_inline struct sshring_port_bitmap* protected_ports(__u8 family, const __u32 addr[4]) {
  struct sshring_lpm_key k;
  lpm_host_key(&k, family, addr);
  return bpf_map_lookup_elem(&protected_dsts, &k);
}

static __always_inline int is_protected(__u8 family, const __u32 dst[4], __u16 port) {
  return port_bit(protected_ports(family, dst), port);
}

static __always_inline int prefix_match(const __u32 addr[4], const __u32 net[4], __u32 plen) {
#pragma unroll
  for (int w = 0; w < 4; w++) {
    int bits = (int)plen - 32 * w;
    if (bits <= 0) break;
    __u32 mask = bits >= 32 ? 0xffffffffu : bpf_htonl(~0u << (32 - bits));
    if ((addr[w] ^ net[w]) & mask) return 0;
  }
  return 1;
}

/* State of one walk over a source prefix's candidate rules (bpf_loop callback context). */
struct rule_walk {
  const struct pkt* p;
  __u32 first;
  __u32 grant;
  __s64 expires;
  int found;
};

static long rule_step(__u32 i, void* ctx) {
  struct rule_walk* w = ctx;
  __u32 idx = w->first + i;
  struct sshring_rule* r = bpf_map_lookup_elem(&rules, &idx);
  if (!r) return 1;
  const struct pkt* p = w->p;
  if (p->dport < r->port_lo || p->dport > r->port_hi) return 0;
  if (r->dst_family != p->family || !prefix_match(p->dst, r->dst, r->dst_plen)) return 0;
  w->grant = r->id;
  w->expires = r->expires_unix;
  w->found = 1;
  return 1; /* sorted latest expiry first: the first covering rule is the policy's choice */
}

/* The decision Snapshot::classify_flow makes, taken in kernel time so expiry needs no user space.
 * *expires is the approving rule's expiry (0 when not approved). */
static __always_inline __u8 classify(const struct pkt* p, __u32* grant, __s64* expires) {
  struct sshring_lpm_key k;
  lpm_host_key(&k, p->family, p->src);
  *grant = 0;
  *expires = 0;
  if (bpf_map_lookup_elem(&relays, &k)) return SSHRING_TAG_PROXIED;
  struct sshring_rule_span* span = bpf_map_lookup_elem(&grants, &k);
  if (!span) return SSHRING_TAG_UNAPPROVED;
  struct rule_walk w = {.p = p, .first = span->first};
  bpf_loop(span->count, rule_step, &w, 0);
  if (!w.found) return SSHRING_TAG_UNAPPROVED;
  *grant = w.grant;
  if (now_unix_ns() < w.expires * 1000000000LL) {
    *expires = w.expires;
    return SSHRING_TAG_APPROVED;
  }
  return SSHRING_TAG_EXPIRED;
}

/* Returns 0 if the event was lost (ring buffer full: counted). */
static __always_inline int emit(__u8 type, __u8 reason, const struct sshring_flow_key* key,
                                const struct sshring_flow* f) {
  struct sshring_event* ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
  if (!ev) {
    stat_inc(SSHRING_STAT_RINGBUF_FULL);
    return 0;
  }
  ev->type = type;
  ev->tag = f->tag;
  ev->reason = reason;
  ev->pad = 0;
  ev->grant = f->grant;
  ev->key = *key;
  ev->first_ns = f->first_ns;
  ev->last_ns = f->last_ns;
  ev->packets[0] = f->packets[0];
  ev->packets[1] = f->packets[1];
  ev->bytes[0] = f->bytes[0];
  ev->bytes[1] = f->bytes[1];
  bpf_ringbuf_submit(ev, 0);
  return 1;
}

/* Enforce mode, ingress: count a dropped non-SYN packet and drop it. */
static __always_inline int drop_packet(void) {
  stat_inc(SSHRING_STAT_DROPPED_PACKETS);
  return TC_ACT_SHOT;
}

/* Parse failures: counted always; in enforce mode, dropped on ingress when the destination address
 * is protected (on any port: the port may be what we could not read). */
static __always_inline int on_unparsed(int r, const struct pkt* p, int ingress) {
  if (r == PARSE_SKIP) return TC_ACT_UNSPEC;
  if (r == PARSE_TRUNCATED)
    stat_inc(SSHRING_STAT_TRUNCATED);
  else if (r == PARSE_FRAGMENT)
    stat_inc(SSHRING_STAT_FRAGMENTS);
  else
    stat_inc(SSHRING_STAT_V6_UNPARSED);
  if (ingress && p->family && protected_ports(p->family, p->dst) && enforce_on()) return drop_packet();
  return TC_ACT_UNSPEC;
}

static __always_inline int is_syn(const struct pkt* p) {
  return (p->flags & (TCP_SYN | TCP_ACK | TCP_RST)) == TCP_SYN;
}

/* Inbound connections only: ingress to a protected port is client->server, egress from one is
 * server->client. Returns the direction. */
static __always_inline int flow_key_of(const struct pkt* p, int ingress, struct sshring_flow_key* key) {
  key->family = p->family;
  __builtin_memcpy(key->client, ingress ? p->src : p->dst, 16);
  __builtin_memcpy(key->server, ingress ? p->dst : p->src, 16);
  key->client_port = ingress ? p->sport : p->dport;
  key->server_port = ingress ? p->dport : p->sport;
  return ingress ? SSHRING_DIR_C2S : SSHRING_DIR_S2C;
}

/* Enforce mode refused a SYN. The client retransmits it: report and count the attempt once. */
static __always_inline int deny_syn(const struct sshring_flow_key* key, const struct sshring_flow* nf) {
  __u64 now = nf->first_ns;
  __u64 len = nf->bytes[0];
  stat_inc(SSHRING_STAT_DROPPED);
  __u64* seen = bpf_map_lookup_elem(&denied, key);
  if (seen && now - *seen < SSHRING_DENY_WINDOW_NS) {
    *seen = now;
    tag_add(nf->tag, 0, len);
    return TC_ACT_SHOT;
  }
  bpf_map_update_elem(&denied, key, &now, BPF_ANY);
  tag_add(nf->tag, 1, len);
  emit(SSHRING_EV_DENY, 0, key, nf);
  return TC_ACT_SHOT;
}

/* A SYN to a protected port with no flow entry: classify, then refuse or track. */
static __always_inline int open_flow(const struct pkt* p, const struct sshring_flow_key* key, __u64 len) {
  struct sshring_flow nf = {};
  nf.tag = classify(p, &nf.grant, &nf.expires_unix);
  nf.first_ns = bpf_ktime_get_boot_ns();
  nf.last_ns = nf.first_ns;
  nf.packets[0] = 1;
  nf.bytes[0] = len;
  if (!tag_allowed(nf.tag) && enforce_on()) return deny_syn(key, &nf);
  tag_add(nf.tag, 1, len);
  if (bpf_map_update_elem(&flows, key, &nf, BPF_NOEXIST) == 0) {
    /* A flood can fill the ring: the entry says so, and the agent's walk reports the open late. */
    if (!emit(SSHRING_EV_OPEN, 0, key, &nf)) {
      struct sshring_flow* f = bpf_map_lookup_elem(&flows, key);
      if (f) f->open_lost = 1;
    }
    return TC_ACT_UNSPEC;
  }
  /* -EEXIST: another CPU inserted the same SYN first; anything else: map full. */
  if (!bpf_map_lookup_elem(&flows, key)) {
    stat_inc(SSHRING_STAT_FLOW_MAP_FULL);
    if (enforce_on()) return TC_ACT_SHOT; /* untracked would be dropped at the next packet anyway */
  }
  return TC_ACT_UNSPEC;
}

/* No flow entry: only an inbound SYN to a protected port opens one. Other packets to a protected
 * port are untracked (connections older than the agent are seeded by it at start): dropped on
 * ingress in enforce mode. */
static __always_inline int no_flow(const struct pkt* p, const struct sshring_flow_key* key, int ingress,
                                   __u64 len) {
  if (!is_protected(p->family, key->server, key->server_port)) return TC_ACT_UNSPEC;
  if (ingress && is_syn(p)) return open_flow(p, key, len);
  stat_inc(SSHRING_STAT_UNTRACKED);
  if (ingress && enforce_on()) return drop_packet();
  return TC_ACT_UNSPEC;
}

/* A SYN on a tracked key is classified again: a half-open entry planted while a grant was live must
 * not carry a later connection. Same decision: a retransmit, keep the entry. Different: close it. */
static __always_inline int syn_keeps_flow(const struct pkt* p, const struct sshring_flow_key* key,
                                          struct sshring_flow* f) {
  __u32 grant;
  __s64 expires;
  __u8 tag = classify(p, &grant, &expires);
  /* After a FIN pair the connection is over (its entry waits for the last ACK): a SYN is a new one. */
  int closed = (f->fin & SSHRING_FIN_BOTH) == SSHRING_FIN_BOTH;
  if (tag == f->tag && grant == f->grant && !closed) return 1;
  if (closed) {
    emit(SSHRING_EV_CLOSE, SSHRING_CLOSE_FIN, key, f);
  } else {
    stat_inc(SSHRING_STAT_RECLASSIFIED);
    emit(SSHRING_EV_CLOSE, SSHRING_CLOSE_REOPEN, key, f);
  }
  bpf_map_delete_elem(&flows, key);
  return 0;
}

/* A packet of a tracked flow: count it, expire it in kernel time, refuse it in enforce mode if its
 * tag no longer allows it (RSTs pass so the peers learn). An outbound RST (our own stack's) closes
 * it. An inbound RST and a FIN pair only mark it: an RST may be out of window, which the socket
 * ignores (deleting here let one spoofed RST per port freeze every session: enforce mode drops
 * packets without an entry), and after the FIN pair the last ACK must still pass. The entry goes at
 * the socket's TCP_CLOSE (sshring_sock_state) or, with no local socket, in the agent's walk. */
static __always_inline int tracked(const struct pkt* p, const struct sshring_flow_key* key,
                                   struct sshring_flow* f, int dir, __u64 len) {
  __sync_fetch_and_add(&f->packets[dir], 1);
  __sync_fetch_and_add(&f->bytes[dir], len);
  f->last_ns = bpf_ktime_get_boot_ns();
  if (f->tag == SSHRING_TAG_APPROVED && f->expires_unix && now_unix_ns() >= f->expires_unix * 1000000000LL) {
    f->tag = SSHRING_TAG_EXPIRED;
    stat_inc(SSHRING_STAT_EXPIRED_LIVE);
  }
  tag_add(f->tag, 0, len);
  if (dir == SSHRING_DIR_C2S && !tag_allowed(f->tag) && !(p->flags & TCP_RST) && enforce_on())
    return drop_packet();
  if ((p->flags & TCP_RST) && dir == SSHRING_DIR_S2C) {
    emit(SSHRING_EV_CLOSE, SSHRING_CLOSE_RST, key, f);
    bpf_map_delete_elem(&flows, key);
  } else if (p->flags & TCP_RST) {
    __sync_fetch_and_or(&f->fin, SSHRING_RST_C2S);
  } else if (p->flags & TCP_FIN) {
    __sync_fetch_and_or(&f->fin, dir == SSHRING_DIR_C2S ? SSHRING_FIN_C2S : SSHRING_FIN_S2C);
  }
  return TC_ACT_UNSPEC;
}

static __always_inline int handle(struct __sk_buff* skb, int ingress) {
  struct pkt p = {};
  int r = parse_pulled(skb, &p);
  if (r != PARSE_OK) return on_unparsed(r, &p, ingress);
  /* Cheap filter first: only packets to or from a watched port go further. */
  if (!port_watched(ingress ? p.dport : p.sport)) return TC_ACT_UNSPEC;
  struct sshring_flow_key key = {};
  int dir = flow_key_of(&p, ingress, &key);
  __u64 len = skb->len;
  /* Established packets of tracked flows never reach the LPM lookups. */
  struct sshring_flow* f = bpf_map_lookup_elem(&flows, &key);
  if (f && ingress && is_syn(&p) && !syn_keeps_flow(&p, &key, f)) f = NULL;
  if (!f) return no_flow(&p, &key, ingress, len);
  return tracked(&p, &key, f, dir, len);
}

SEC("tc")
int sshring_ingress(struct __sk_buff* skb) {
  return handle(skb, 1);
}

SEC("tc")
int sshring_egress(struct __sk_buff* skb) {
  return handle(skb, 0);
}

/* A local socket reached TCP_CLOSE: its flow ends here, whether by a FIN pair, an accepted RST or
 * locally (timeouts, aborts, process exits).
 * tp_btf attaches by BTF id, so it needs no tracefs (absent inside `ip netns exec`). */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(sshring_sock_state, struct sock* sk, int oldstate, int newstate) {
  if (newstate != TCP_CLOSE || sk->sk_protocol != IPPROTO_TCP) return 0;
  struct sshring_flow_key key = {};
  const struct sock_common* c = &sk->__sk_common;
  __u16 family = c->skc_family;
  if (family == AF_INET) {
    key.family = 4;
    set_v4(key.server, c->skc_rcv_saddr);
    set_v4(key.client, c->skc_daddr);
  } else if (family == AF_INET6) {
    key.family = 6;
    bpf_probe_read_kernel(key.server, 16, &c->skc_v6_rcv_saddr);
    bpf_probe_read_kernel(key.client, 16, &c->skc_v6_daddr);
    if (is_v4_mapped(key.server) && is_v4_mapped(key.client)) {
      key.family = 4;
      unmap_v4(key.server);
      unmap_v4(key.client);
    }
  } else {
    return 0;
  }
  /* The local socket is the server side: its local port is the protected one. skc_num is already
   * cleared here (the port is released before the state store), inet_sport is not. */
  __be16 sport = 0;
  bpf_probe_read_kernel(&sport, sizeof(sport), &((struct inet_sock*)sk)->inet_sport);
  key.server_port = bpf_ntohs(sport);
  key.client_port = bpf_ntohs(c->skc_dport);
  struct sshring_flow* f = bpf_map_lookup_elem(&flows, &key);
  if (!f) return 0;
  /* Why it ended: an inbound RST the socket accepted (tcp_reset sets sk_err before TCP_CLOSE;
   * ECONNRESET, or EPIPE in CLOSE_WAIT), else the FIN pair, else a local end (abort, timeout). */
  __u8 reason = SSHRING_CLOSE_LOCAL;
  int err = sk->sk_err;
  if ((f->fin & SSHRING_RST_C2S) && (err == ECONNRESET || err == EPIPE))
    reason = SSHRING_CLOSE_RST;
  else if ((f->fin & SSHRING_FIN_BOTH) == SSHRING_FIN_BOTH)
    reason = SSHRING_CLOSE_FIN;
  if (reason == SSHRING_CLOSE_LOCAL) stat_inc(SSHRING_STAT_CLOSED_LOCAL);
  emit(SSHRING_EV_CLOSE, reason, &key, f);
  bpf_map_delete_elem(&flows, &key);
  return 0;
}
