#include "tls/tls_session.h"

#include <openssl/bio.h>
#include <openssl/err.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sluice::tls {

namespace {

// BoringSSL's largest record plaintext (SSL3_RT_MAX_PLAIN_LENGTH); WriteV
// packs records to this size.
constexpr size_t kMaxRecordPlaintext = 16384;

// Plaintext blocks: one full record decrypts into one block.
constexpr size_t kPlaintextBlock = 16384;

}  // namespace

// The memory BIO: reads pull from the bytes being fed, writes append to the
// session's output. It never blocks writes, so BoringSSL never holds
// unflushed ciphertext, and its write buffer is freed right after each
// record.
struct TlsSessionBio {
  static TlsSession* Self(BIO* bio) { return static_cast<TlsSession*>(BIO_get_data(bio)); }
  static int Create(BIO* bio) {
    BIO_set_init(bio, 1);
    return 1;
  }
  static int Read(BIO* bio, char* out, int len) {
    BIO_clear_retry_flags(bio);
    int n = Self(bio)->BioRead(out, len);
    if (n == 0) {
      BIO_set_retry_read(bio);
      return -1;
    }
    return n;
  }
  static int Write(BIO* bio, const char* data, int len) {
    BIO_clear_retry_flags(bio);
    if (len <= 0) return 0;
    Self(bio)->BioWrite(data, static_cast<size_t>(len));
    return len;
  }
  static long Ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
  static const BIO_METHOD* Method() {
    static const BIO_METHOD* method = [] {
      BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sluice");
      if (m == nullptr || !BIO_meth_set_create(m, &Create) || !BIO_meth_set_read(m, &Read) ||
          !BIO_meth_set_write(m, &Write) || !BIO_meth_set_ctrl(m, &Ctrl)) {
        std::abort();
      }
      return m;
    }();
    return method;
  }
};

TlsSession::TlsSession(std::shared_ptr<const TlsContext> context)
    : context_(std::move(context)), output_writer_(16384) {
  ssl_.reset(SSL_new(context_->ssl_ctx()));
  BIO* bio = ssl_ ? BIO_new(TlsSessionBio::Method()) : nullptr;
  if (bio == nullptr) std::abort();  // out of memory
  BIO_set_data(bio, this);
  SSL_set_bio(ssl_.get(), bio, bio);  // one BIO both ways; SSL owns it
  SSL_set_accept_state(ssl_.get());
  // Frees this connection's copy of the certificate, key and cipher
  // configuration once the handshake is over (see the memory note in the
  // header).
  SSL_set_shed_handshake_config(ssl_.get(), 1);
}

TlsSession::~TlsSession() = default;

int TlsSession::BioRead(char* out, int len) {
  size_t n = std::min(input_.size(), static_cast<size_t>(len));
  std::memcpy(out, input_.data(), n);
  input_.remove_prefix(n);
  return static_cast<int>(n);
}

void TlsSession::BioWrite(const char* data, size_t len) {
  output_bytes_ += len;
  while (len > 0) {
    size_t room = 0;
    char* dst = output_writer_.Reserve(&room);
    size_t n = std::min(room, len);
    std::memcpy(dst, data, n);
    output_writer_.Commit(n);
    // Take a full block at once so Reserve never has to move untaken bytes.
    if (n == room) output_.push_back(output_writer_.Take());
    data += n;
    len -= n;
  }
}

void TlsSession::TakeOutput(std::vector<core::Slice>* out) {
  core::Slice tail = output_writer_.Take();
  // Drop the writer's reference to its block: the block now lives exactly as
  // long as the Slices being sent, and an idle session holds none. The next
  // write starts a new block (one malloc per send, cheap next to the send).
  output_writer_.Trim();
  for (core::Slice& s : output_) out->push_back(std::move(s));
  // Release the list's capacity too (a large write leaves one entry per
  // 16 KiB): idle sessions keep nothing.
  output_ = std::vector<core::Slice>();
  if (!tail.empty()) out->push_back(std::move(tail));
  output_bytes_ = 0;
}

absl::Status TlsSession::Fail(int ssl_error, const char* what) {
  std::string reason;
  if (ssl_error == SSL_ERROR_SSL) {
    uint32_t err = ERR_peek_error();
    const char* r = err != 0 ? ERR_reason_error_string(err) : nullptr;
    reason = r != nullptr ? r : "unknown";
  } else {
    reason = SSL_error_description(ssl_error);
  }
  // The error queue is per thread; leaving entries would mislead the next
  // connection's diagnosis on this worker.
  ERR_clear_error();
  status_ = absl::InvalidArgumentError(absl::StrCat("tls ", what, ": ", reason));
  return status_;
}

absl::Status TlsSession::Feed(std::string_view ciphertext, std::vector<core::Slice>* plaintext) {
  if (!status_.ok()) return status_;
  if (ciphertext.empty() || peer_closed_) return absl::OkStatus();
  input_ = ciphertext;
  absl::Status status;
  if (!handshake_done_) {
    int r = SSL_do_handshake(ssl_.get());
    if (r == 1) {
      handshake_done_ = true;
      const uint8_t* proto = nullptr;
      unsigned proto_len = 0;
      SSL_get0_alpn_selected(ssl_.get(), &proto, &proto_len);
      alpn_ = proto_len > 0 ? std::string_view(reinterpret_cast<const char*>(proto), proto_len)
                            : std::string_view("http/1.1");
    } else {
      int err = SSL_get_error(ssl_.get(), r);
      if (err != SSL_ERROR_WANT_READ) status = Fail(err, "handshake failed");
    }
  }
  // Application data may follow the client's Finished in the same read.
  if (status.ok() && handshake_done_) status = ReadApplicationData(plaintext);
  // BoringSSL pulls until the BIO runs dry unless the connection ended
  // (error, close_notify); then the rest is meaningless and dropped.
  input_ = {};
  return status;
}

absl::Status TlsSession::ReadApplicationData(std::vector<core::Slice>* plaintext) {
  // Peek first so that reads bringing no application data (tickets, alerts,
  // partial records) allocate no block.
  char probe;
  int n = SSL_peek(ssl_.get(), &probe, 1);
  if (n > 0) {
    core::SliceWriter writer(kPlaintextBlock);
    for (;;) {
      size_t room = 0;
      char* dst = writer.Reserve(&room);
      n = SSL_read(ssl_.get(), dst, static_cast<int>(std::min<size_t>(room, INT_MAX)));
      if (n <= 0) break;
      writer.Commit(static_cast<size_t>(n));
      if (static_cast<size_t>(n) == room) plaintext->push_back(writer.Take());
    }
    core::Slice tail = writer.Take();
    if (!tail.empty()) plaintext->push_back(std::move(tail));
    // The writer's destructor drops its reference: blocks live as long as
    // the caller's Slices.
  }
  int err = SSL_get_error(ssl_.get(), n);
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return absl::OkStatus();
    case SSL_ERROR_ZERO_RETURN:
      peer_closed_ = true;
      return absl::OkStatus();
    default:
      return Fail(err, "record error");
  }
}

absl::Status TlsSession::WriteRecords(const char* data, size_t len) {
  while (len > 0) {
    int chunk = static_cast<int>(std::min<size_t>(len, 1 << 30));
    int n = SSL_write(ssl_.get(), data, chunk);
    // The BIO accepts every byte, so SSL_write writes all or fails.
    if (n <= 0) return Fail(SSL_get_error(ssl_.get(), n), "write failed");
    data += n;
    len -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status TlsSession::Write(std::string_view plaintext) {
  std::string_view one[] = {plaintext};
  return WriteV(one);
}

absl::Status TlsSession::WriteV(std::span<const std::string_view> pieces) {
  if (!status_.ok()) return status_;
  if (!handshake_done_) {
    return absl::FailedPreconditionError("tls write before the handshake");
  }
  if (shutdown_) {
    return absl::FailedPreconditionError("tls write after shutdown");
  }
  char stage[kMaxRecordPlaintext];
  size_t staged = 0;
  for (std::string_view piece : pieces) {
    while (!piece.empty()) {
      if (staged == 0 && piece.size() >= kMaxRecordPlaintext) {
        size_t whole = piece.size() - piece.size() % kMaxRecordPlaintext;
        absl::Status s = WriteRecords(piece.data(), whole);
        if (!s.ok()) return s;
        piece.remove_prefix(whole);
        continue;
      }
      size_t n = std::min(kMaxRecordPlaintext - staged, piece.size());
      std::memcpy(stage + staged, piece.data(), n);
      staged += n;
      piece.remove_prefix(n);
      if (staged == kMaxRecordPlaintext) {
        absl::Status s = WriteRecords(stage, staged);
        if (!s.ok()) return s;
        staged = 0;
      }
    }
  }
  if (staged > 0) return WriteRecords(stage, staged);
  return absl::OkStatus();
}

void TlsSession::Shutdown() {
  if (shutdown_ || !status_.ok()) return;
  shutdown_ = true;
  if (!handshake_done_) return;
  // Queues close_notify through the BIO. The return value only says whether
  // the peer's close_notify has arrived too, which peer_closed() tracks.
  SSL_shutdown(ssl_.get());
  ERR_clear_error();
}

bool TlsSession::session_reused() const {
  return handshake_done_ && SSL_session_reused(ssl_.get());
}

int TlsSession::version() const { return handshake_done_ ? SSL_version(ssl_.get()) : 0; }

std::string_view TlsSession::cipher() const {
  if (!handshake_done_) return {};
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl_.get());
  return c != nullptr ? SSL_CIPHER_get_name(c) : std::string_view();
}

std::string_view TlsSession::server_name() const {
  const char* name = SSL_get_servername(ssl_.get(), TLSEXT_NAMETYPE_host_name);
  return name != nullptr ? name : std::string_view();
}

}  // namespace sluice::tls
