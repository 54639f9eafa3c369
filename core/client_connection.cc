#include "core/client_connection.h"

#include <cstring>

#include "core/h1_downstream.h"
#include "core/log.h"
#include "core/worker.h"

namespace sluice::core {
namespace {
// RFC 9113 3.4: the client connection preface.
constexpr std::string_view kH2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
}  // namespace

ClientConnection::ClientConnection(Worker* worker, int fd,
                                   std::string client_addr, ListenerKind kind)
    : worker_(worker),
      stream_(worker, fd, this),
      client_addr_(std::move(client_addr)),
      kind_(kind) {}

ClientConnection::~ClientConnection() {
  if (flush_pending_) worker_->CancelFlush(this);
}

void ClientConnection::Start() {
  worker_->AddConnection(this);
  if (kind_ == ListenerKind::kRedirect) {
    StartH1();
  } else {
    // Plain listeners wait for the first bytes to tell h2c from HTTP/1.1.
    stream_.StartReading();
  }
}

void ClientConnection::Drain() {
  draining_ = true;
  if (session_) {
    session_->Drain();
  } else {
    stream_.Close();
  }
}

void ClientConnection::StartH1() {
  session_ = std::make_unique<H1Downstream>(this);
  session_->Start();
  if (draining_ && !closing()) session_->Drain();
}

void ClientConnection::StartH2() {
  // HTTP/2 sessions arrive with the h2 codec; until then h2c is refused
  // with a GOAWAY-free close rather than misparsed as HTTP/1.1.
  LOG_DEBUG("client %s: h2c not available", client_addr_.c_str());
  stream_.Close();
}

void ClientConnection::OnData(Slice data) {
  if (closing()) return;
  Deliver(std::move(data));
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
  std::vector<Slice> pending;
  pending.swap(sniffed_);
  sniffed_bytes_ = 0;
  if (prefix) {
    StartH2();
  } else {
    StartH1();
  }
  for (Slice& s : pending) {
    if (closing() || !session_) break;
    session_->OnData(std::move(s));
  }
}

void ClientConnection::OnReadEnd(int res) {
  if (session_) {
    session_->OnReadEnd(res);
  } else {
    stream_.Close();
  }
}

void ClientConnection::OnWriteProgress() {
  if (session_) session_->OnWriteProgress();
}

void ClientConnection::OnWriteError(int res) {
  if (session_) {
    session_->OnWriteError(res);
  } else {
    stream_.Close();
  }
}

void ClientConnection::RequestFlush() {
  if (flush_pending_) return;
  flush_pending_ = true;
  worker_->RequestFlush(this);
}

void ClientConnection::Flush() {
  flush_pending_ = false;
  if (session_ && !closing()) session_->Flush();
}

void ClientConnection::OnClosed() {
  worker_->RemoveConnection(this);
  delete this;
}

}  // namespace sluice::core
