// Test helpers: a plain HTTP/1.0 GET (no client library, so the exposer is checked as Prometheus sees
// it) and a parser for the text exposition format.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

namespace sshring::metrics::testing {

// GET http://host:port/path; returns the body (throws on connect failure or a non-200 status).
std::string http_get(const std::string& host, uint16_t port, const std::string& path);

// Samples keyed by "name{k="v",...}" exactly as exposed (labels in exposition order).
std::map<std::string, double> parse_samples(const std::string& text);
// Family names from "# TYPE name type" lines, with their types.
std::map<std::string, std::string> parse_types(const std::string& text);
// One sample's value, nullopt if absent.
std::optional<double> sample(const std::string& text, const std::string& key);

}  // namespace sshring::metrics::testing
