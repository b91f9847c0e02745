// The one BPF map iteration loop (get_next_key + lookup) for user space.
#pragma once

#include <bpf/bpf.h>

namespace sshring::bpf {

// Keys deleted by the kernel between get_next_key and lookup are skipped. If the current key is
// deleted mid-walk the kernel restarts from the first key, so a walk may see a key twice; callers
// that delete while walking collect first and delete after.
template <class K, class V, class F>
void for_each_entry(int fd, F&& f) {
  K key{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, &next) == 0) {
    V v{};
    if (bpf_map_lookup_elem(fd, &next, &v) == 0 && !f(next, v)) return;
    key = next;
    prev = &key;
  }
}

}  // namespace sshring::bpf
