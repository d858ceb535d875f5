// SPDX-License-Identifier: Apache-2.0
// The hub's TLS identity, the certificate pin, and TLS for the blocking client, in plain OpenSSL.
#include "protocol/tls.hpp"

#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>

#include <fmt/format.h>

#include "common/files.hpp"
#include "protocol/auth.hpp"

namespace sortie::net {
namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using Bio = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using Key = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

Bio memory_bio(const std::string& text) {
  return Bio(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

std::string fingerprint_of(X509* cert) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(cert, EVP_sha256(), md, &n) != 1)
    return {};
  return protocol::to_hex(std::string_view(reinterpret_cast<char*>(md), n));
}

Result<TlsIdentity> make_identity(const std::string& common_name) {
  Key key(EVP_EC_gen("P-256"));
  Cert cert(X509_new());
  if (!key || !cert)
    return make_error(ErrorCode::Internal, openssl_error("cannot make a key pair"));
  X509_set_version(cert.get(), 2);
  std::string serial = protocol::random_bytes(16);
  serial[0] = static_cast<char>(serial[0] & 0x7f); // a positive serial number
  BIGNUM* bn = BN_bin2bn(reinterpret_cast<const unsigned char*>(serial.data()), 16, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600); // clocks of other nodes may lag
  X509_time_adj_ex(X509_getm_notAfter(cert.get()), 20 * 365, 0, nullptr);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                             0);
  X509_set_issuer_name(cert.get(), name);
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0)
    return make_error(ErrorCode::Internal, openssl_error("cannot sign the hub's certificate"));
  Bio cert_out(BIO_new(BIO_s_mem()));
  Bio key_out(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_X509(cert_out.get(), cert.get()) != 1 ||
      PEM_write_bio_PrivateKey(key_out.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) !=
          1)
    return make_error(ErrorCode::Internal, openssl_error("cannot encode the hub's certificate"));
  return TlsIdentity{bio_text(cert_out.get()), bio_text(key_out.get()), fingerprint_of(cert.get())};
}

/// Parses and checks a stored identity: the key must be the certificate's.
Result<TlsIdentity> parse_identity(std::string cert_pem, std::string key_pem,
                                   const std::filesystem::path& cert_file,
                                   const std::filesystem::path& key_file) {
  auto damaged = [&](const std::string& what) {
    return make_error(ErrorCode::FailedPrecondition,
                      fmt::format("{}: delete {} and {} and start the hub again to make a new "
                                  "certificate (copies of hub.json elsewhere must then be copied "
                                  "again)",
                                  what, cert_file.string(), key_file.string()));
  };
  auto cb = memory_bio(cert_pem);
  Cert cert(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
  if (!cert)
    return damaged(fmt::format("{} is not a PEM certificate", cert_file.string()));
  auto kb = memory_bio(key_pem);
  Key key(PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
  if (!key)
    return damaged(fmt::format("{} is not a PEM private key", key_file.string()));
  if (X509_check_private_key(cert.get(), key.get()) != 1)
    return damaged(fmt::format("{} is not the key of {}", key_file.string(), cert_file.string()));
  ERR_clear_error();
  return TlsIdentity{std::move(cert_pem), std::move(key_pem), fingerprint_of(cert.get())};
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

} // namespace

std::string openssl_error(const char* fallback) {
  unsigned long e = ERR_get_error();
  unsigned long last = e;
  while ((e = ERR_get_error()) != 0)
    last = e;
  if (last == 0)
    return fallback;
  char text[256];
  ERR_error_string_n(last, text, sizeof text);
  const char* reason = ERR_reason_error_string(last);
  return reason ? std::string(reason) : std::string(text);
}

Result<TlsIdentity> load_or_make_tls_identity(const std::filesystem::path& cert_file,
                                              const std::filesystem::path& key_file,
                                              const std::string& common_name) {
  std::error_code ec;
  bool have_cert = std::filesystem::exists(cert_file, ec);
  bool have_key = std::filesystem::exists(key_file, ec);
  if (!have_cert && !have_key) {
    auto made = make_identity(common_name);
    if (!made.ok())
      return made.error();
    // The key first: a certificate without its key would be refused at the next start.
    if (auto r = write_file_atomic(key_file, made->key_pem, 0600); !r.ok())
      return r.error();
    if (auto r = write_file_atomic(cert_file, made->cert_pem, 0644); !r.ok())
      return r.error();
    return made;
  }
  if (have_cert != have_key)
    return make_error(ErrorCode::FailedPrecondition,
                      fmt::format("{} exists without {}: delete it and start the hub again to make "
                                  "a new certificate",
                                  (have_cert ? cert_file : key_file).string(),
                                  (have_cert ? key_file : cert_file).string()));
  struct stat st{};
  if (::stat(key_file.c_str(), &st) == 0 && (st.st_mode & 077) != 0)
    return make_error(ErrorCode::PermissionDenied,
                      fmt::format("{} is readable by other users (mode {:o}); it is the hub's TLS "
                                  "key: run `chmod 600 {}`, or delete it and {} to make new ones",
                                  key_file.string(), st.st_mode & 0777, key_file.string(),
                                  cert_file.string()));
  auto cert_pem = read_file(cert_file);
  if (!cert_pem.ok())
    return cert_pem.error();
  auto key_pem = read_file(key_file);
  if (!key_pem.ok())
    return key_pem.error();
  return parse_identity(std::move(*cert_pem), std::move(*key_pem), cert_file, key_file);
}

std::string peer_fingerprint(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  return cert ? fingerprint_of(cert) : std::string();
}

Result<void> check_pinned(SSL* ssl, const std::string& expected, const std::string& what) {
  std::string seen = peer_fingerprint(ssl);
  if (expected.empty())
    return make_error(ErrorCode::FailedPrecondition,
                      fmt::format("hub.json names no TLS certificate for {} (tls_fingerprint; it "
                                  "was written by an older sortie): restart the hub, then copy its "
                                  "hub.json again",
                                  what));
  if (seen == expected)
    return ok_result();
  return make_error(ErrorCode::PermissionDenied,
                    fmt::format("the TLS certificate at {} is not the one hub.json names "
                                "(fingerprint {}, expected {}): another program listens there, or "
                                "this copy of hub.json is from an older certificate; copy hub.json "
                                "from the hub's profile again",
                                what, seen.empty() ? "none" : seen.substr(0, 16) + "…",
                                expected.substr(0, 16) + "…"));
}

Result<std::shared_ptr<SSL_CTX>> make_server_context(const TlsIdentity& identity) {
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
  if (!ctx)
    return make_error(ErrorCode::Internal, openssl_error("cannot make a TLS context"));
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  // No resumption: every link makes a full handshake, and no ticket key lives in the hub.
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  // Idle links (thousands of them) keep no read and write buffers.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_RELEASE_BUFFERS);
  auto cb = memory_bio(identity.cert_pem);
  Cert cert(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
  auto kb = memory_bio(identity.key_pem);
  Key key(PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
  if (!cert || !key || SSL_CTX_use_certificate(ctx.get(), cert.get()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx.get(), key.get()) != 1)
    return make_error(ErrorCode::Internal, openssl_error("cannot load the hub's certificate"));
  return ctx;
}

std::shared_ptr<SSL_CTX> client_context() {
  static std::shared_ptr<SSL_CTX> ctx = [] {
    std::shared_ptr<SSL_CTX> c(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
    SSL_CTX_set_min_proto_version(c.get(), TLS1_3_VERSION);
    SSL_CTX_set_verify(c.get(), SSL_VERIFY_NONE, nullptr); // the pin is checked after the handshake
    SSL_CTX_set_session_cache_mode(c.get(), SSL_SESS_CACHE_OFF);
    return c;
  }();
  return ctx;
}

// ---------------------------------------------------------------------------------------------

BlockingTls::BlockingTls(SSL* ssl, int fd) : fd_(fd), ssl_(ssl) {
  in_ = BIO_new(BIO_s_mem());
  out_ = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in_, -1); // an empty input means "more to come", not the end
  SSL_set_bio(ssl_, in_, out_);
}

BlockingTls::~BlockingTls() {
  if (ssl_)
    SSL_free(ssl_);
}

Result<std::unique_ptr<BlockingTls>> BlockingTls::connect(int fd,
                                                          const std::string& fingerprint,
                                                          std::int64_t timeout_ms,
                                                          const std::string& what) {
  SSL* ssl = SSL_new(client_context().get());
  if (!ssl)
    return make_error(ErrorCode::Internal, openssl_error("cannot make a TLS session"));
  std::unique_ptr<BlockingTls> tls(new BlockingTls(ssl, fd));
  SSL_set_connect_state(ssl);
  std::int64_t end = now_ms() + timeout_ms;
  auto failed = [&](const std::string& why) {
    return make_error(ErrorCode::Unavailable,
                      fmt::format("TLS handshake with {} failed: {}", what, why));
  };
  while (true) {
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    if (auto r = tls->flush(); !r.ok())
      return failed(r.error().message);
    if (rc == 1)
      break;
    if (SSL_get_error(ssl, rc) != SSL_ERROR_WANT_READ)
      return failed(openssl_error("the hub's answer is not TLS"));
    Io io = tls->fill();
    if (io == Io::Closed)
      return failed("the hub closed the connection (is this a sortie hub that speaks TLS?)");
    if (io == Io::Failed)
      return failed(tls->error_);
    if (io == Io::Done)
      continue;
    std::int64_t left = end - now_ms();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) == 0)
      return make_error(ErrorCode::Timeout,
                        fmt::format("TLS handshake with {}: no answer within {} ms", what,
                                    timeout_ms));
  }
  if (auto r = check_pinned(ssl, fingerprint, what); !r.ok())
    return r.error();
  return tls;
}

Result<void> BlockingTls::flush() {
  char buffer[16384];
  int n;
  while ((n = BIO_read(out_, buffer, sizeof buffer)) > 0) {
    int done = 0;
    while (done < n) {
      ssize_t w = ::send(fd_, buffer + done, static_cast<std::size_t>(n - done), MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w < 0)
        return make_error(ErrorCode::Unavailable,
                          fmt::format("lost the connection to the hub: {}", errno_text(errno)));
      done += static_cast<int>(w);
    }
  }
  return ok_result();
}

BlockingTls::Io BlockingTls::fill() {
  char buffer[16384];
  while (true) {
    ssize_t n = ::recv(fd_, buffer, sizeof buffer, MSG_DONTWAIT);
    if (n > 0) {
      BIO_write(in_, buffer, static_cast<int>(n));
      return Io::Done;
    }
    if (n == 0)
      return Io::Closed;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return Io::WantRead;
    error_ = fmt::format("lost the connection to the hub: {}", errno_text(errno));
    return Io::Failed;
  }
}

std::pair<BlockingTls::Io, std::size_t> BlockingTls::read(void* data, std::size_t size) {
  while (true) {
    std::size_t n = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(ssl_, data, size, &n);
    if (auto r = flush(); !r.ok()) { // TLS 1.3 may answer, e.g. a key update
      error_ = r.error().message;
      return {Io::Failed, 0};
    }
    if (rc == 1)
      return {Io::Done, n};
    switch (SSL_get_error(ssl_, rc)) {
    case SSL_ERROR_WANT_READ:
      break;
    case SSL_ERROR_ZERO_RETURN:
      return {Io::Closed, 0};
    default:
      error_ = fmt::format("TLS error: {} (the link was altered or cut)",
                           openssl_error("unknown"));
      return {Io::Failed, 0};
    }
    Io io = fill();
    if (io != Io::Done)
      return {io, 0};
  }
}

Result<void> BlockingTls::write(const void* data, std::size_t size) {
  std::size_t n = 0;
  ERR_clear_error();
  // Memory output never fills, so one call takes everything.
  if (size > 0 && SSL_write_ex(ssl_, data, size, &n) != 1)
    return make_error(ErrorCode::Unavailable,
                      fmt::format("TLS error: {}", openssl_error("cannot encrypt")));
  return flush();
}

} // namespace sortie::net
