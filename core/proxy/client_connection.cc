#include "core/proxy/client_connection.h"

#include <cstring>

#include "core/observe/log.h"
#include "core/proxy/h1_downstream.h"
#include "core/proxy/h2_downstream.h"
#include "core/server/shard.h"

namespace sluice::core {
namespace {
// RFC 9113 3.4: the client connection preface.
constexpr std::string_view kH2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
constexpr std::string_view kPriMethod = kH2Preface.substr(0, 4);  // "PRI "
// How long a closing connection keeps reading (and dropping) client bytes.
constexpr int64_t kLingerNs = 2'000'000'000;
}  // namespace

ClientConnection::ClientConnection(Shard* shard, int fd, policy::IpAddress peer, ListenerKind kind,
                                   std::shared_ptr<const tls::TlsContext> tls)
    : shard_(shard),
      number_(shard->NextConnectionNumber()),
      stream_(shard->loop(), fd, this),
      peer_(peer),
      client_addr_(peer.ToString()),
      kind_(kind),
      handshake_timer_([this] {
        ++shard_->metrics().tls_handshake_failures;
        LOG_INFO("*%llu client %s: TLS handshake timed out",
                 static_cast<unsigned long long>(number_), client_addr_.c_str());
        stream_.Close();
      }),
      linger_timer_([this] { stream_.Close(); }),
      presession_timer_([this] { stream_.Close(); }) {
  if (kind_ == ListenerKind::kTls && tls) {
    tls_ = std::make_unique<tls::TlsSession>(std::move(tls));
  }
  account_ = shard_->loop()->NewAccount();
  stream_.SetAccount(account_, /*upstream=*/false);
  ++shard_->metrics().connections_reading;
}

ClientConnection::~ClientConnection() {
  if (flush_pending_) shard_->CancelFlush(this);
  SetPhase(Phase::kReading);
  --shard_->metrics().connections_reading;
  // The session (and with it any relay holding an upstream link) goes
  // before the account; then the account leaves the stream.
  session_.reset();
  stream_.SetAccount(nullptr, false);
  shard_->loop()->ReleaseAccount(account_);
}

namespace {
int64_t& PhaseGauge(MetricsShard& m, ClientConnection::Phase p) {
  switch (p) {
    case ClientConnection::Phase::kWriting:
      return m.connections_writing;
    case ClientConnection::Phase::kWaiting:
      return m.connections_waiting;
    case ClientConnection::Phase::kReading:
      break;
  }
  return m.connections_reading;
}
}  // namespace

void ClientConnection::SetPhase(Phase phase) {
  if (phase == phase_) return;
  MetricsShard& m = shard_->metrics();
  --PhaseGauge(m, phase_);
  ++PhaseGauge(m, phase);
  phase_ = phase;
}

void ClientConnection::Start() {
  shard_->AddConnection(this, over_limit_);
  if (kind_ == ListenerKind::kRedirect) {
    StartSession(std::make_unique<H1Downstream>(this));
  } else if (kind_ == ListenerKind::kTls) {
    if (!tls_) {
      stream_.Close();
      return;
    }
    shard_->Timers(shard_->config().handshake_timeout_ns)->Arm(&handshake_timer_, shard_->now_ns());
    stream_.StartReading();
  } else {
    // Plain listeners wait for the first bytes to tell h2c from HTTP/1.1;
    // a client that sends none (or only a prefix of the h2 preface) is
    // closed at --client_header_timeout, as a stalled head would be.
    shard_->Timers(shard_->config().client_header_timeout_ns)
        ->Arm(&presession_timer_, shard_->now_ns());
    stream_.StartReading();
  }
}

void ClientConnection::Drain() {
  draining_ = true;
  if (close_when_written_) return;
  if (session_) {
    session_->Drain();
  } else {
    // Accepted, no protocol chosen yet (TLS handshake or the first bytes
    // of a plain connection on the way): as for an idle HTTP/1.1
    // connection, a short grace for its request, then it closes.
    shard_->Timers(kDrainGraceNs)->Arm(&presession_timer_, shard_->now_ns());
  }
}

void ClientConnection::StartSession(std::unique_ptr<ClientSession> session) {
  session_ = std::move(session);
  presession_timer_.Disarm();  // the session has its own drain rules
  session_->Start();
  if (draining_ && !closing()) session_->Drain();
}

void ClientConnection::OnData(Slice data) {
  if (closing() || close_when_written_ || lingering_) return;
  if (tls_) {
    OnCiphertext(std::move(data));
  } else {
    Deliver(std::move(data));
  }
}

void ClientConnection::OnCiphertext(Slice data) {
  std::vector<Slice> plain;
  absl::Status st = tls_->Feed(data.view(), &plain);
  data = Slice();  // the receive buffer goes back to the ring at once
  if (!st.ok()) {
    // A failed handshake or a bad record closes this connection only; the
    // alert BoringSSL queued goes out first.
    if (!tls_->handshake_done()) ++shard_->metrics().tls_handshake_failures;
    LOG_INFO("*%llu client %s: %s", static_cast<unsigned long long>(number_), client_addr_.c_str(),
             std::string(st.message()).c_str());
    SendTlsOutput();
    CloseAfterWrite();
    return;
  }
  if (tls_->handshake_done() && !session_) {
    handshake_timer_.Disarm();
    ++shard_->metrics().tls_handshakes;
    if (tls_->session_reused()) ++shard_->metrics().tls_resumptions;
    if (tls_->alpn() == "h2") {
      StartSession(std::make_unique<H2Downstream>(this));
    } else {
      StartSession(std::make_unique<H1Downstream>(this));
    }
  }
  for (Slice& s : plain) {
    if (closing() || !session_) break;
    session_->OnData(std::move(s));
  }
  if (tls_->HasOutput()) SendTlsOutput();
  if (tls_->peer_closed() && session_ && !closing()) session_->OnReadEnd(0);
}

void ClientConnection::Write(Slice s) {
  if (s.empty()) return;
  if (!tls_) {
    stream_.Write(std::move(s));
    return;
  }
  plain_bytes_ += s.size();
  plain_.push_back(std::move(s));
  RequestFlush();
}

void ClientConnection::WriteStatic(std::string_view s) {
  if (!tls_) {
    stream_.WriteStatic(s);
  } else {
    Write(Slice::Static(s));
  }
}

void ClientConnection::WriteCopy(std::string_view s) {
  if (!tls_) {
    stream_.WriteCopy(s);
    return;
  }
  // Small copies (a chunk's size line) share one block until the turn's
  // plaintext is sealed, instead of one allocation each.
  size_t room = 0;
  char* p = copies_.Reserve(&room);
  if (room < s.size()) {
    Write(Slice::Copy(s));
    return;
  }
  memcpy(p, s.data(), s.size());
  copies_.Commit(s.size());
  Write(copies_.Take());
}

void ClientConnection::WriteOwned(std::string s) {
  if (!tls_) {
    stream_.WriteOwned(std::move(s));
  } else {
    Write(Slice::FromString(std::move(s)));
  }
}

void ClientConnection::SealPlaintext() {
  if (plain_.empty()) return;
  std::vector<std::string_view> pieces;
  pieces.reserve(plain_.size());
  for (const Slice& s : plain_) pieces.push_back(s.view());
  absl::Status st = tls_->WriteV(pieces);
  plain_.clear();
  plain_bytes_ = 0;
  copies_.Trim();  // idle connections hold no copy block
  if (!st.ok()) {
    LOG_DEBUG("*%llu client %s: %s", static_cast<unsigned long long>(number_), client_addr_.c_str(),
              std::string(st.message()).c_str());
    stream_.Close();
    return;
  }
  SendTlsOutput();
}

void ClientConnection::SendTlsOutput() {
  std::vector<Slice> out;
  tls_->TakeOutput(&out);
  for (Slice& s : out) stream_.Write(std::move(s));
}

void ClientConnection::CloseAfterWrite() {
  close_when_written_ = true;
  if (stream_.reading()) stream_.StopReading();
  if (stream_.write_idle()) stream_.Close();
}

void ClientConnection::Deliver(Slice data) {
  if (session_) {
    session_->OnData(std::move(data));
    return;
  }
  // Sniff: a prefix of the HTTP/2 preface waits for more bytes; anything
  // else is HTTP/1.1 (whose codec then sees every byte, in order).
  sniffed_bytes_ += data.size();
  sniffed_.push_back(std::move(data));
  std::string head;
  for (const Slice& s : sniffed_) {
    head.append(s.data(), std::min(s.size(), kH2Preface.size() - head.size()));
    if (head.size() == kH2Preface.size()) break;
  }
  const bool prefix = kH2Preface.substr(0, head.size()) == head;
  if (prefix && head.size() < kH2Preface.size()) return;
  // RFC 9113 3.4: the method PRI exists only to begin the HTTP/2 preface (it
  // is reserved so that no HTTP/1.1 request uses it). A client that began
  // the preface and strayed from it gets HTTP/2's answer to a bad preface
  // (the h2 codec sends GOAWAY(PROTOCOL_ERROR) and the connection closes),
  // never an HTTP/1.1 page.
  const bool h2 = prefix || head.compare(0, kPriMethod.size(), kPriMethod) == 0;
  std::vector<Slice> pending;
  pending.swap(sniffed_);
  sniffed_bytes_ = 0;
  if (h2) {
    StartSession(std::make_unique<H2Downstream>(this));
  } else {
    StartSession(std::make_unique<H1Downstream>(this));
  }
  for (Slice& s : pending) {
    if (closing() || !session_) break;
    session_->OnData(std::move(s));
  }
}

void ClientConnection::OnReadEnd(int res) {
  if (lingering_) {
    stream_.Close();
  } else if (session_) {
    session_->OnReadEnd(res);
  } else {
    stream_.Close();
  }
}

void ClientConnection::OnWriteProgress() {
  if (close_when_written_) {
    if (stream_.write_idle()) stream_.Close();
    return;
  }
  if (lingering_) return;
  if (session_) session_->OnWriteProgress();
}

void ClientConnection::OnWriteError(int res) {
  if (session_) {
    session_->OnWriteError(res);
  } else {
    stream_.Close();
  }
}

void ClientConnection::CloseGracefully() {
  if (closing() || lingering_) return;
  lingering_ = true;
  if (tls_ && tls_->handshake_done() && !tls_->failed()) {
    SealPlaintext();
    if (closing()) return;
    tls_->Shutdown();
    SendTlsOutput();
  }
  if (stream_.read_ended()) {
    // The client already closed its side: nothing to drain.
    if (stream_.write_idle()) {
      stream_.Close();
    } else {
      close_when_written_ = true;
    }
    return;
  }
  stream_.ShutdownWriteWhenDrained();
  stream_.StartReading();
  shard_->Timers(kLingerNs)->Arm(&linger_timer_, shard_->now_ns());
}

void ClientConnection::RequestFlush() {
  if (flush_pending_) return;
  flush_pending_ = true;
  shard_->RequestFlush(this);
}

void ClientConnection::Flush() {
  flush_pending_ = false;
  if (closing()) return;
  if (session_ && !lingering_) session_->Flush();
  if (tls_ && !closing()) SealPlaintext();
}

void ClientConnection::OnClosed() {
  shard_->RemoveConnection(this, over_limit_);
  delete this;
}

}  // namespace sluice::core
