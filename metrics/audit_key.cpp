#include "metrics/audit_key.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "common/base64.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "protocol/keys.h"

namespace sshring::metrics {

namespace {

using protocol::MdCtx;
using protocol::Pkey;

protocol::Ed25519PublicKey as_key(std::string_view raw32) {
  protocol::Ed25519PublicKey k{};
  std::memcpy(k.data(), raw32.data(), std::min(raw32.size(), k.size()));
  return k;
}

std::string raw_public(EVP_PKEY* k) {
  std::string raw(32, '\0');
  size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(k, reinterpret_cast<unsigned char*>(raw.data()), &len) != 1 || len != 32)
    throw std::runtime_error("audit key: cannot read the Ed25519 public key");
  return raw;
}

Pkey read_pem(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) common::throw_errno("audit key " + path);
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    (void)std::snprintf(mode, sizeof(mode), "%03o", static_cast<unsigned>(st.st_mode & 0777));
    throw std::runtime_error("audit key " + path + " is accessible by group or others (mode " + mode +
                             "); run chmod 600 " + path);
  }
  FILE* fp = std::fopen(path.c_str(), "r");
  if (!fp) common::throw_errno("open audit key " + path);
  Pkey k(PEM_read_PrivateKey(fp, nullptr, nullptr, nullptr));
  (void)std::fclose(fp);  // read only: nothing to lose
  if (!k || EVP_PKEY_get_id(k.get()) != EVP_PKEY_ED25519)
    throw std::runtime_error(
        "audit key " + path +
        " is not an Ed25519 private key in PEM (PKCS#8); move it away to create a new one");
  return k;
}

Pkey create_pem(const std::string& path) {
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec)
      throw std::runtime_error("audit key " + path + ": cannot create " + parent.string() + ": " +
                               ec.message());
  }
  EVP_PKEY* raw = nullptr;
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr);
  bool ok = ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_keygen(ctx, &raw) == 1;
  EVP_PKEY_CTX_free(ctx);
  Pkey k(raw);
  if (!ok) throw std::runtime_error("audit key: Ed25519 key generation failed");
  // O_EXCL: two writers starting at once must not overwrite each other's key.
  common::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) {
    if (errno == EEXIST) return read_pem(path);
    common::throw_errno("create audit key " + path);
  }
  FILE* fp = ::fdopen(fd.release(), "w");
  if (!fp) common::throw_errno("create audit key " + path);
  bool wrote = PEM_write_PrivateKey(fp, k.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1;
  wrote = std::fflush(fp) == 0 && ::fsync(::fileno(fp)) == 0 && wrote;
  wrote = std::fclose(fp) == 0 && wrote;
  if (!wrote) {
    ::unlink(path.c_str());
    throw std::runtime_error("audit key " + path + ": could not write the new key");
  }
  return k;
}

}  // namespace

struct AuditKey::Impl {
  Pkey key;
  std::string raw_pub;
};

AuditKey::AuditKey(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
AuditKey::AuditKey(AuditKey&&) noexcept = default;
AuditKey& AuditKey::operator=(AuditKey&&) noexcept = default;
AuditKey::~AuditKey() = default;

AuditKey AuditKey::load(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->key = read_pem(path);
  impl->raw_pub = raw_public(impl->key.get());
  return AuditKey(std::move(impl));
}

AuditKey AuditKey::load_or_create(const std::string& path) {
  if (::access(path.c_str(), F_OK) == 0) return load(path);
  auto impl = std::make_unique<Impl>();
  impl->key = create_pem(path);
  impl->raw_pub = raw_public(impl->key.get());
  return AuditKey(std::move(impl));
}

std::string AuditKey::sign(std::string_view msg) const {
  MdCtx ctx(EVP_MD_CTX_new());
  std::string sig(64, '\0');
  size_t len = sig.size();
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, impl_->key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) != 1 ||
      len != 64) {
    throw std::runtime_error("audit key: Ed25519 signing failed");
  }
  return sig;
}

std::string AuditKey::public_line() const {
  return protocol::format_openssh_public_key(as_key(impl_->raw_pub));
}

std::string AuditKey::fingerprint() const {
  return protocol::fingerprint(as_key(impl_->raw_pub));
}

bool AuditPublicKey::verify(std::string_view msg, std::string_view sig) const {
  return raw.size() == 32 && protocol::ed25519_verify(as_key(raw), msg, sig);
}

std::optional<AuditPublicKey> parse_public_key(std::string_view type, std::string_view b64,
                                               std::string* error) {
  auto fail = [&](const char* why) -> std::optional<AuditPublicKey> {
    if (error) *error = why;
    return std::nullopt;
  };
  if (type != protocol::kSshEd25519) return fail("key type must be ssh-ed25519");
  auto blob = common::base64_decode(b64);
  if (!blob) return fail("key is not valid base64");
  auto key = protocol::parse_ed25519_key_blob(*blob);
  if (!key) return fail("key blob is not an ssh-ed25519 public key");
  return AuditPublicKey{std::string(key->begin(), key->end()), protocol::ssh_fingerprint(*blob)};
}

TrustedKeys TrustedKeys::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read trusted audit keys " + path + ": " + std::strerror(errno));
  TrustedKeys keys;
  std::string line;
  for (int no = 1; std::getline(in, line); ++no) {
    std::istringstream ss(line);
    std::string writer, type, b64;
    if (!(ss >> writer) || writer[0] == '#') continue;
    std::string why = "expected 'WRITER-ID ssh-ed25519 BASE64'";
    if (ss >> type >> b64) {
      if (auto k = parse_public_key(type, b64, &why)) {
        keys.add(writer, std::move(*k));
        continue;
      }
    }
    std::string msg = path + ":" + std::to_string(no) + ": ";
    msg += why;
    msg += " (get a writer's key with `sshring audit key --pub --audit-key FILE`)";
    throw std::runtime_error(msg);
  }
  return keys;
}

void TrustedKeys::add(const std::string& writer, AuditPublicKey key) {
  keys_.emplace(writer, std::move(key));
}

std::vector<const AuditPublicKey*> TrustedKeys::for_writer(const std::string& writer) const {
  std::vector<const AuditPublicKey*> out;
  for (const auto& w : {writer, std::string("*")}) {
    auto [b, e] = keys_.equal_range(w);
    for (auto it = b; it != e; ++it) out.push_back(&it->second);
  }
  return out;
}

}  // namespace sshring::metrics
