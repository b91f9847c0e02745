/* Numbers shared by the BPF programs (sshring.bpf.c) and the C++ loader: ABI version, flow tags,
 * event and close codes, stat indices and map sizes. Types live in sshring_structs.h. Plain C: the
 * values are ABI between kernel and user space and persist in pinned maps, so change them only
 * together with SSHRING_ABI_VERSION. */
#ifndef SSHRING_BPF_SSHRING_CONSTS_H
#define SSHRING_BPF_SSHRING_CONSTS_H

/* Bump when any pinned struct or index changes: the loader refuses pinned maps of another version. */
#define SSHRING_ABI_VERSION 2

/* Flow tags: same numbers as sshring::policy::FlowTag (bpf/abi_check.h asserts it). */
#define SSHRING_TAG_PROXIED 1
#define SSHRING_TAG_APPROVED 2
#define SSHRING_TAG_EXPIRED 3
#define SSHRING_TAG_UNAPPROVED 4
#define SSHRING_NUM_TAGS 5 /* index 0 unused */

/* Map sizes. Tries are BPF_F_NO_PREALLOC: max_entries is only a cap, memory follows use. */
#define SSHRING_MAX_FLOWS 65536         /* LRU flow table */
#define SSHRING_MAX_PREFIXES (1 << 20)  /* per LPM trie: relays, protected_dsts, grants */
#define SSHRING_MAX_GRANT_NAMES 262144  /* grant number -> id (user space only) */
#define SSHRING_DEFAULT_MAX_RULES 65536 /* rules array: sized at load from the policy, at least this */
#define SSHRING_MAX_DENIED 8192         /* refused SYNs remembered for the deny window */
#define SSHRING_MAX_IFACES 256
#define SSHRING_RINGBUF_BYTES (1 << 20)
#define SSHRING_GRANT_ID_LEN 64
/* IPv6 extension headers walked before the transport header; more are "unparsed". */
#define SSHRING_MAX_V6_EXT 4
/* SYN retransmits of a denied connection within this window are dropped without a new event. */
#define SSHRING_DENY_WINDOW_NS (10ULL * 1000000000ULL)

/* Addresses in LPM keys start with a 32-bit family word: prefixlen is 32 + the CIDR length. */
#define SSHRING_LPM_FAMILY_BITS 32

#define SSHRING_DIR_C2S 0
#define SSHRING_DIR_S2C 1

/* Close marks in sshring_flow.fin. The kernel does not delete an entry at the second FIN or at an
 * inbound RST: the FIN pair still needs its last ACK, and an RST may be out of window (spoofed) and
 * ignored by the socket. The entry goes when the local socket reaches TCP_CLOSE (tracepoint) or, with
 * no local socket, when the agent's walk finds it marked, quiet and without a connection. */
#define SSHRING_FIN_C2S 1
#define SSHRING_FIN_S2C 2
#define SSHRING_FIN_BOTH (SSHRING_FIN_C2S | SSHRING_FIN_S2C)
#define SSHRING_RST_C2S 4 /* an inbound RST was seen; the socket decides whether it ended the flow */

#define SSHRING_EV_OPEN 1
#define SSHRING_EV_CLOSE 2
#define SSHRING_EV_DENY 3 /* enforce mode dropped the SYN */

#define SSHRING_CLOSE_FIN 1
#define SSHRING_CLOSE_RST 2
#define SSHRING_CLOSE_LOCAL 3  /* sock:inet_sock_set_state -> TCP_CLOSE */
#define SSHRING_CLOSE_IDLE 4   /* evicted by the agent (user space only) */
#define SSHRING_CLOSE_REOPEN 5 /* a new SYN on the key was classified differently */
#define SSHRING_CLOSE_CUT 6    /* enforce mode ended it (user space only: SOCK_DESTROY) */

/* How a flow entry was made. */
#define SSHRING_ORIGIN_SYN 0
#define SSHRING_ORIGIN_SEEDED 1 /* the agent found the connection established at start */

/* Indices of the per-CPU stats array: every degraded path increments one. The first eight keep
 * their numbers from ABI 1; user space names them in metrics::kKernelStatNames (same order). */
enum sshring_stat {
  SSHRING_STAT_TRUNCATED = 0,   /* headers shorter than they claim */
  SSHRING_STAT_FRAGMENTS,       /* TCP over IPv4 fragments / IPv6 fragment header (atomic too) */
  SSHRING_STAT_V6_UNPARSED,     /* IPv6: too many or unknown extension headers */
  SSHRING_STAT_RINGBUF_FULL,    /* bpf_ringbuf_reserve failed: event lost */
  SSHRING_STAT_FLOW_MAP_FULL,   /* flow insert failed */
  SSHRING_STAT_UNTRACKED,       /* non-SYN packet to a protected port without a flow entry */
  SSHRING_STAT_DROPPED,         /* SYNs dropped in enforce mode */
  SSHRING_STAT_CLOSED_LOCAL,    /* flows the socket tracepoint closed without FIN pair or taken RST */
  SSHRING_STAT_DROPPED_PACKETS, /* enforce: non-SYN packets dropped (the four paths above + cut flows) */
  SSHRING_STAT_EXPIRED_LIVE,    /* a live flow's grant expired: the kernel re-tagged it */
  SSHRING_STAT_RECLASSIFIED,    /* a SYN on an existing key was classified differently */
  SSHRING_STAT_NUM,
};

#endif /* SSHRING_BPF_SSHRING_CONSTS_H */
