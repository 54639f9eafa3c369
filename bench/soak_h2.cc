// The soak client's HTTP/2 connections: several streams in flight, paced
// RST_STREAM cancels, GOAWAY handling.
#include <sys/epoll.h>

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/h2_client.h"
#include "bench/soak.h"
#include "bench/stats.h"

namespace sluice::bench::soak {
namespace {

// HTTP/2: --streams_per_h2_conn streams kept in flight; a stream that ends
// is checked and replaced.
class H2Conn final : public Conn {
 public:
  H2Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, uint64_t seed)
      : Conn(epfd, ctx, addr, "h2", seed) {
    for (int i = 0; i < absl::GetFlag(FLAGS_streams_per_h2_conn); ++i) {
      slots_.push_back(std::make_unique<Slot>(this));
    }
  }

  void Abandon() override {
    for (auto& s : slots_) {
      if (s->active) {
        Fail(Err::kTimeout, absl::StrCat("h2 ", s->req.path(), ": unfinished at the end"));
        s->active = false;
      }
    }
    h2_.reset();
    phase_ = Phase::kFinished;
  }

 private:
  struct Slot final : H2StreamSink {
    explicit Slot(H2Conn* c) : conn(c) {}
    void OnStatus(int s) override { status = s; }
    void OnData(std::string_view data, int64_t) override {
      body.append(data);
      if (req.cancel && !cancel_sent && status == 200) {
        units.Update(body, req.route == Route::kOpenAiStream);
        if (units.units >= req.cancel_after) {
          if (conn->TakeCancelToken()) {
            cancel_sent = conn->h2_->Cancel(id);
          } else {
            req.cancel = false;
            g_stats.cancel_skipped.fetch_add(1);
          }
        }
      }
    }
    void OnClose(uint32_t code) override {
      closed = true;
      error_code = code;
    }

    H2Conn* conn;
    Request req;
    bool active = false;  // a request is in flight on this slot
    bool closed = false;  // ... and its stream has closed, not yet counted
    bool cancel_sent = false;
    bool timed_out = false;
    int32_t id = 0;
    uint32_t error_code = 0;
    int status = 0;
    std::string body;
    UnitCounter units;
    int64_t started = 0;
  };

  // The cancel token bucket: --h2_cancels_per_s tokens, refilled at that
  // rate.
  bool TakeCancelToken() {
    const double rate = absl::GetFlag(FLAGS_h2_cancels_per_s);
    const int64_t now = NowUs(CLOCK_MONOTONIC);
    cancel_tokens_ =
        std::min(rate, cancel_tokens_ + rate * static_cast<double>(now - cancel_at_) / 1e6);
    cancel_at_ = now;
    if (cancel_tokens_ < 1) return false;
    cancel_tokens_ -= 1;
    return true;
  }

  void OnOpen(std::unique_ptr<TlsSocket> tls, int64_t now) override {
    h2_ = std::make_unique<H2ClientConn>(std::move(tls));
    going_away_ = false;
    if (!g_stopping.load()) {
      for (auto& s : slots_) Submit(*s, now);
    }
    Pump(now);
  }

  void Submit(Slot& s, int64_t now) {
    s.req = NextRequest();
    s.active = true;
    s.closed = false;
    s.cancel_sent = false;
    s.timed_out = false;
    s.error_code = 0;
    s.status = 0;
    s.body.clear();
    s.units = UnitCounter{};
    s.started = now;
    const std::string body = s.req.body();
    std::vector<H2ClientConn::Header> headers = {
        {":method", body.empty() ? "GET" : "POST"},
        {":scheme", "https"},
        {":authority", Authority()},
        {":path", s.req.path()},
        {"user-agent", "sluice-soak"},
    };
    if (!absl::GetFlag(FLAGS_key).empty()) {
      headers.push_back({"authorization", "Bearer " + absl::GetFlag(FLAGS_key)});
    }
    if (!body.empty()) {
      headers.push_back({"content-type", "application/json"});
      headers.push_back({"content-length", absl::StrCat(body.size())});
      headers.push_back({"x-sim-tokens", absl::StrCat(s.req.tokens)});
      headers.push_back({"x-sim-token-delay-ms", absl::GetFlag(FLAGS_token_delay_ms)});
    }
    g_stats.h2.fetch_add(1);
    s.id = h2_->Submit(headers, body, &s);
    if (s.id < 0) {
      Fail(Err::kH2, absl::StrCat("submit: ", nghttp2_strerror(s.id)));
      g_stats.h2.fetch_sub(1);
      s.active = false;
    }
  }

  // Writes what nghttp2 has queued and settles the streams that closed,
  // until nothing changes. False when the connection was lost (and
  // re-dialled or finished).
  bool Pump(int64_t now) {
    while (true) {
      if (!h2_->Flush()) {
        Lost("write: " + h2_->LastError(), now);
        return false;
      }
      bool any = false;
      for (auto& s : slots_) {
        if (!s->active || !s->closed) continue;
        any = true;
        Settle(*s);
        if (!g_stopping.load() && !going_away_) Submit(*s, now);
      }
      if (!any) break;
    }
    SetWantWrite(h2_->WantsWrite());
    if ((g_stopping.load() || going_away_) && h2_->open_streams() == 0 && !h2_->WantsWrite()) {
      // Done, or the server refuses new streams here (GOAWAY): a new
      // connection, unless stopping.
      h2_->GoAway();
      h2_->Flush();
      h2_.reset();
      Closed(now);
      return false;
    }
    return true;
  }

  void Settle(Slot& s) {
    s.active = false;
    if (s.timed_out) {
      Fail(Err::kTimeout, absl::StrCat("h2 ", s.req.path(), ": no complete response in ",
                                       absl::GetFlag(FLAGS_request_timeout_s), " s (status ",
                                       s.status, ", ", s.body.size(), " body bytes)"));
    } else if (s.error_code == NGHTTP2_NO_ERROR) {
      Complete(s.req, s.status, s.body, "h2");
    } else if (s.error_code == NGHTTP2_CANCEL && s.cancel_sent) {
      g_stats.cancelled.fetch_add(1);
    } else if (s.error_code == NGHTTP2_REFUSED_STREAM) {
      // Not processed: above a GOAWAY's last stream id, or submitted after
      // it. No new streams on this connection.
      going_away_ = true;
      Fail(Err::kRefused, absl::StrCat("h2 ", s.req.path(), ": stream refused (GOAWAY)"));
    } else {
      Fail(Err::kReset, absl::StrCat("h2 ", s.req.path(), ": stream closed with error code ",
                                     s.error_code, " (", nghttp2_http2_strerror(s.error_code),
                                     "), status ", s.status, ", ", s.body.size(), " body bytes"));
    }
  }

  void OnOpenEvent(uint32_t events, int64_t now) override {
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) != 0 && !h2_->OnReadable()) {
      // Streams that closed normally before the end still count.
      for (auto& s : slots_) {
        if (s->active && s->closed) Settle(*s);
      }
      Lost(h2_->LastError(), now);
      return;
    }
    Pump(now);
  }

  void OnOpenTick(int64_t now) override {
    bool changed = g_stopping.load();
    for (auto& s : slots_) {
      if (s->active && !s->closed && !s->timed_out &&
          now - s->started > absl::GetFlag(FLAGS_request_timeout_s) * 1e6) {
        s->timed_out = true;
        h2_->Cancel(s->id);
        changed = true;
      }
    }
    if (changed) Pump(now);
  }

  // The connection ended: its streams still in flight are errors.
  void Lost(std::string what, int64_t now) {
    int open = 0;
    for (auto& s : slots_) {
      if (!s->active) continue;
      s->active = false;
      if (s->timed_out) {
        Settle(*s);
        continue;
      }
      Fail(Err::kClosed,
           absl::StrCat("h2 ", s->req.path(), ": connection lost (", what, "), status ", s->status,
                        ", ", s->body.size(), " body bytes"));
      ++open;
    }
    if (open == 0) g_stats.server_closes.fetch_add(1);
    h2_.reset();
    Closed(now);
  }

  std::unique_ptr<H2ClientConn> h2_;
  std::vector<std::unique_ptr<Slot>> slots_;
  bool going_away_ = false;
  double cancel_tokens_ = absl::GetFlag(FLAGS_h2_cancels_per_s);
  int64_t cancel_at_ = NowUs(CLOCK_MONOTONIC);
};

}  // namespace

std::unique_ptr<Conn> NewH2Conn(int epfd, SSL_CTX* ctx, const sockaddr_in& addr, uint64_t seed) {
  return std::make_unique<H2Conn>(epfd, ctx, addr, seed);
}

}  // namespace sluice::bench::soak
