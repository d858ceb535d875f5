// SPDX-License-Identifier: Apache-2.0
// TLS 1.3 on every TCP link (docs/protocol/02-handshake.md §2.7): the hub's own certificate, made
// at its first start and pinned by its SHA-256 fingerprint in hub.json; no certificate authority.
// This half is plain OpenSSL (the certificate, the pin, the blocking client of BlockingLink);
// tls_stream.hpp has the event-loop streams.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "sortie/result.hpp"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct bio_st BIO;

namespace sortie::net {

/// The hub's certificate and private key (PEM) and the certificate's fingerprint.
struct TlsIdentity {
  std::string cert_pem;
  std::string key_pem;
  std::string fingerprint; ///< lowercase hex SHA-256 of the DER certificate (64 characters)
};

/// Reads the hub's certificate and key, or makes them (ECDSA P-256, self-signed, 20 years) when
/// neither file exists. The key file is written with mode 0600 and refused if others can read it.
Result<TlsIdentity> load_or_make_tls_identity(const std::filesystem::path& cert_file,
                                              const std::filesystem::path& key_file,
                                              const std::string& common_name);

/// The fingerprint of the peer's certificate on an established connection ("" if none).
std::string peer_fingerprint(SSL* ssl);

/// Checks the hub's certificate against the pin from hub.json; the error says what to do.
Result<void> check_pinned(SSL* ssl, const std::string& expected, const std::string& what);

/// A server-side TLS 1.3 context holding the identity (the hub keeps one).
Result<std::shared_ptr<SSL_CTX>> make_server_context(const TlsIdentity& identity);
/// A client-side TLS 1.3 context. It does not check chains: the pin is the check.
std::shared_ptr<SSL_CTX> client_context();

/// The text of OpenSSL's newest queued error (and clears the queue).
std::string openssl_error(const char* fallback);

/// TLS for the blocking client (BlockingLink) over a connected socket it does not own. OpenSSL
/// works on memory buffers; this class moves bytes with send(MSG_NOSIGNAL) and recv(), so a hub
/// that went away cannot raise SIGPIPE in the caller's process.
class BlockingTls {
public:
  enum class Io { Done, WantRead, Closed, Failed };

  ~BlockingTls();
  BlockingTls(const BlockingTls&) = delete;
  BlockingTls& operator=(const BlockingTls&) = delete;

  /// Runs the client handshake on `fd` (waiting with poll() up to `timeout_ms`) and checks the
  /// hub's certificate against `fingerprint`.
  static Result<std::unique_ptr<BlockingTls>> connect(int fd,
                                                      const std::string& fingerprint,
                                                      std::int64_t timeout_ms,
                                                      const std::string& what);

  /// Decrypts what has arrived: Done with bytes, WantRead when the socket has nothing yet (poll
  /// it for POLLIN, then call again), Closed at the end of the stream, Failed (see error()).
  std::pair<Io, std::size_t> read(void* data, std::size_t size);
  /// Encrypts and sends all of `data` (blocking).
  Result<void> write(const void* data, std::size_t size);
  /// What failed, after Io::Failed.
  const std::string& error() const { return error_; }

private:
  BlockingTls(SSL* ssl, int fd);
  Result<void> flush();
  /// One recv() into OpenSSL's input: Done, WantRead (nothing there), Closed or Failed.
  Io fill();
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  BIO* in_ = nullptr;  ///< owned by ssl_
  BIO* out_ = nullptr; ///< owned by ssl_
  std::string error_;
};

} // namespace sortie::net
