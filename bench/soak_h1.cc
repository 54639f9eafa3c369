// The soak client's HTTP/1.1 connections: one request at a time on a
// keepalive connection, the response framed by llhttp (strict).
#include <llhttp.h>
#include <sys/epoll.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/soak.h"

namespace sluice::bench::soak {
namespace {

// HTTP/1.1: one request at a time on a keepalive connection.
class H1Conn final : public Conn {
 public:
  H1Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, uint64_t seed)
      : Conn(epfd, ctx, addr, "http/1.1", seed) {
    llhttp_settings_init(&settings_);
    settings_.on_headers_complete = [](llhttp_t* p) {
      auto* c = static_cast<H1Conn*>(p->data);
      c->status_ = p->status_code;
      return 0;
    };
    settings_.on_body = [](llhttp_t* p, const char* at, size_t len) {
      static_cast<H1Conn*>(p->data)->body_.append(at, len);
      return 0;
    };
    settings_.on_message_complete = [](llhttp_t* p) {
      auto* c = static_cast<H1Conn*>(p->data);
      c->complete_ = true;
      c->keep_alive_ = llhttp_should_keep_alive(p) != 0;
      return static_cast<int>(HPE_PAUSED);
    };
  }

  void Abandon() override {
    if (in_flight_)
      Fail(Err::kTimeout, absl::StrCat("h1 ", req_.path(), ": unfinished at the end"));
    in_flight_ = false;
    tls_.reset();
    phase_ = Phase::kFinished;
  }

 private:
  void OnOpen(std::unique_ptr<TlsSocket> tls, int64_t now) override {
    tls_ = std::move(tls);
    if (g_stopping.load()) {
      Close(now);
    } else {
      SendNext(now);
    }
  }

  void SendNext(int64_t now) {
    req_ = NextRequest();
    const std::string body = req_.body();
    std::string head =
        absl::StrCat(body.empty() ? "GET " : "POST ", req_.path(),
                     " HTTP/1.1\r\nHost: ", Authority(), "\r\nUser-Agent: sluice-soak\r\n");
    if (!absl::GetFlag(FLAGS_key).empty()) {
      absl::StrAppend(&head, "Authorization: Bearer ", absl::GetFlag(FLAGS_key), "\r\n");
    }
    if (!body.empty()) {
      absl::StrAppend(&head, "Content-Type: application/json\r\nContent-Length: ", body.size(),
                      "\r\nX-Sim-Tokens: ", req_.tokens,
                      "\r\nX-Sim-Token-Delay-Ms: ", absl::GetFlag(FLAGS_token_delay_ms), "\r\n");
    }
    absl::StrAppend(&head, "\r\n", body);
    llhttp_init(&parser_, HTTP_RESPONSE, &settings_);
    parser_.data = this;
    status_ = 0;
    body_.clear();
    units_ = UnitCounter{};
    complete_ = false;
    in_flight_ = true;
    started_ = now;
    g_stats.h1.fetch_add(1);
    TlsSocket::Result r = tls_->Write(head);
    if (r == TlsSocket::Result::kError || r == TlsSocket::Result::kClosed) {
      Lost(absl::StrCat("write: ", tls_->LastError()), now);
      return;
    }
    SetWantWrite(tls_->HasPending());
  }

  void OnOpenEvent(uint32_t events, int64_t now) override {
    if ((events & EPOLLOUT) != 0 && tls_->HasPending()) {
      TlsSocket::Result r = tls_->Flush();
      if (r == TlsSocket::Result::kError || r == TlsSocket::Result::kClosed) {
        Lost(absl::StrCat("write: ", tls_->LastError()), now);
        return;
      }
      SetWantWrite(tls_->HasPending());
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0) ReadAll(now);
  }

  void ReadAll(int64_t now) {
    char buf[16384];
    while (tls_ != nullptr) {
      size_t n = 0;
      TlsSocket::Result r = tls_->Read(buf, sizeof(buf), &n);
      if (r == TlsSocket::Result::kDone) {
        if (!Feed(std::string_view(buf, n), now)) return;
        continue;
      }
      if (r == TlsSocket::Result::kWantRead || r == TlsSocket::Result::kWantWrite) return;
      if (!in_flight_) {
        // sluice closed an idle keepalive connection: allowed, not an error.
        g_stats.server_closes.fetch_add(1);
        Close(now);
        return;
      }
      if (r == TlsSocket::Result::kClosed && llhttp_finish(&parser_) == HPE_OK && complete_) {
        Finish(now);
        return;
      }
      Lost(absl::StrCat(r == TlsSocket::Result::kClosed ? "server closed" : "read error",
                        " mid-response (status ", status_, ", ", body_.size(),
                        " body bytes): ", tls_->LastError()),
           now);
      return;
    }
  }

  // False when the connection went away (closed or re-dialled).
  bool Feed(std::string_view data, int64_t now) {
    if (!in_flight_) {
      Fail(Err::kFraming, absl::StrCat("h1: ", data.size(), " bytes with no request in flight"));
      Close(now);
      return false;
    }
    llhttp_errno_t e = llhttp_execute(&parser_, data.data(), data.size());
    if (e == HPE_PAUSED) {
      const char* pos = llhttp_get_error_pos(&parser_);
      if (pos != data.data() + data.size()) {
        Fail(Err::kFraming, absl::StrCat("h1 ", req_.path(), ": ", data.data() + data.size() - pos,
                                         " bytes after the response"));
        in_flight_ = false;
        Close(now);
        return false;
      }
      Finish(now);
      return tls_ != nullptr;
    }
    if (e != HPE_OK) {
      Fail(Err::kFraming, absl::StrCat("h1 ", req_.path(), ": ", llhttp_errno_name(e), " ",
                                       llhttp_get_error_reason(&parser_)));
      in_flight_ = false;
      Close(now);
      return false;
    }
    if (req_.cancel && status_ == 200) {
      units_.Update(body_, req_.route == Route::kOpenAiStream);
      if (units_.units >= req_.cancel_after) {
        g_stats.cancelled.fetch_add(1);
        in_flight_ = false;
        Close(now);
        return false;
      }
    }
    return true;
  }

  void Finish(int64_t now) {
    in_flight_ = false;
    Complete(req_, status_, body_, "h1");
    if (!keep_alive_) g_stats.server_closes.fetch_add(1);
    if (!keep_alive_ || g_stopping.load()) {
      Close(now);
    } else {
      SendNext(now);
    }
  }

  // The connection failed with a request in flight.
  void Lost(std::string what, int64_t now) {
    Fail(Err::kClosed, absl::StrCat("h1 ", req_.path(), ": ", what));
    in_flight_ = false;
    Close(now);
  }

  void OnOpenTick(int64_t now) override {
    if (in_flight_ && now - started_ > absl::GetFlag(FLAGS_request_timeout_s) * 1e6) {
      Fail(Err::kTimeout, absl::StrCat("h1 ", req_.path(), ": no complete response in ",
                                       absl::GetFlag(FLAGS_request_timeout_s), " s (status ",
                                       status_, ", ", body_.size(), " body bytes)"));
      in_flight_ = false;
      Close(now);
    } else if (!in_flight_ && g_stopping.load()) {
      Close(now);
    }
  }

  void Close(int64_t now) {
    tls_.reset();  // closes the socket: no close_notify, as after a cancel
    Closed(now);
  }

  std::unique_ptr<TlsSocket> tls_;
  llhttp_settings_t settings_;
  llhttp_t parser_;
  Request req_;
  bool in_flight_ = false;
  bool complete_ = false;
  bool keep_alive_ = false;
  int status_ = 0;
  std::string body_;
  UnitCounter units_;
  int64_t started_ = 0;
};

}  // namespace

std::unique_ptr<Conn> NewH1Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, uint64_t seed) {
  return std::make_unique<H1Conn>(epfd, ctx, addr, seed);
}

}  // namespace sluice::bench::soak
