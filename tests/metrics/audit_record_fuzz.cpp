// libFuzzer: the audit record parser and the report on untrusted lines (files anyone may edit).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/civil_time.h"
#include "metrics/audit_record.h"
#include "metrics/audit_report.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  std::string err;
  auto rec = sshring::metrics::parse_record(line, &err);
  if (rec) {
    sshring::metrics::AuditReport rep({});
    rep.add(*rec);
    (void)rep.to_json().dump();
    (void)rep.to_text();
  }
  (void)sshring::common::parse_rfc3339_ms(line.substr(0, 40));
  return 0;
}
