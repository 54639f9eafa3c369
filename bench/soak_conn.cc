// The soak client's request mix and the connection base: dialling, the
// TLS handshake, ALPN, redialling after a close.
#include <sys/epoll.h>

#include <cstring>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/soak.h"

namespace sluice::bench::soak {
namespace {

constexpr int kDialTimeoutUs = 10'000'000;
constexpr int kRedialDelayUs = 200'000;

}  // namespace

Request Mix::Next() {
  const uint64_t r_route = rng_() % 100, r_tokens = rng_(), r_cancel = rng_() % 100,
                 r_after = rng_();
  Request req;
  req.route = r_route < 15   ? Route::kTags
              : r_route < 30 ? Route::kVersion
              : r_route < 60 ? Route::kGenerate
              : r_route < 75 ? Route::kChat
                             : Route::kOpenAiStream;
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (req.route != Route::kTags && req.route != Route::kVersion) {
    req.tokens = 2 + static_cast<int>(r_tokens % static_cast<uint64_t>(max_tokens - 1));
  }
  if (req.streaming() && static_cast<int>(r_cancel) < absl::GetFlag(FLAGS_cancel_percent)) {
    req.cancel = true;
    req.cancel_after = 1 + static_cast<int>(r_after % static_cast<uint64_t>(req.tokens));
  }
  return req;
}

std::string Authority() {
  return absl::StrCat(absl::GetFlag(FLAGS_sni), ":", absl::GetFlag(FLAGS_port));
}

void Conn::OnEvent(uint32_t events, int64_t now) {
  if (phase_ == Phase::kConnecting || phase_ == Phase::kHandshake) {
    DriveDial(events, now);
  } else if (phase_ == Phase::kOpen) {
    OnOpenEvent(events, now);
  }
}

void Conn::OnTick(int64_t now) {
  if (phase_ == Phase::kBackoff && now >= redial_at_) {
    if (g_stopping.load()) {
      phase_ = Phase::kFinished;
    } else {
      Dial(now);
    }
  } else if ((phase_ == Phase::kConnecting || phase_ == Phase::kHandshake) &&
             now - dial_start_ > kDialTimeoutUs) {
    DialFailed(Err::kConnect, "connect and handshake took over 10 s", now);
  } else if (phase_ == Phase::kOpen) {
    OnOpenTick(now);
  }
}

void Conn::Closed(int64_t now) {
  fd_ = -1;
  if (g_stopping.load()) {
    phase_ = Phase::kFinished;
  } else {
    Dial(now);
  }
}

void Conn::SetWantWrite(bool want) {
  if (fd_ < 0 || want == want_write_) return;
  want_write_ = want;
  epoll_event ev{};
  ev.events = want ? EPOLLIN | EPOLLOUT : EPOLLIN;
  ev.data.ptr = this;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, fd_, &ev);
}

Request Conn::NextRequest() {
  Request req = mix_.Next();
  g_stats.routes[static_cast<size_t>(req.route)].fetch_add(1);
  return req;
}

void Conn::Dial(int64_t now) {
  dial_start_ = now;
  int fd = StartConnect(addr_);
  if (fd < 0) {
    DialFailed(Err::kConnect, absl::StrCat("connect: ", strerror(-fd)), now);
    return;
  }
  g_stats.connects.fetch_add(1);
  fd_ = fd;
  dial_ = std::make_unique<TlsSocket>(ctx_, fd, absl::GetFlag(FLAGS_sni));
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.ptr = this;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  want_write_ = true;
  phase_ = Phase::kConnecting;
}

void Conn::DialFailed(Err kind, std::string what, int64_t now) {
  Fail(kind, absl::StrCat(alpn_, " ", what));
  dial_.reset();
  fd_ = -1;
  phase_ = Phase::kBackoff;
  redial_at_ = now + kRedialDelayUs;
}

void Conn::DriveDial(uint32_t events, int64_t now) {
  if (phase_ == Phase::kConnecting) {
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
    int err = ConnectResult(fd_);
    if (err != 0) {
      DialFailed(Err::kConnect, absl::StrCat("connect: ", strerror(err)), now);
      return;
    }
    phase_ = Phase::kHandshake;
  }
  TlsSocket::Result r = dial_->Handshake();
  if (r == TlsSocket::Result::kWantRead || r == TlsSocket::Result::kWantWrite) {
    SetWantWrite(r == TlsSocket::Result::kWantWrite);
    return;
  }
  if (r != TlsSocket::Result::kDone) {
    DialFailed(Err::kTls, "TLS handshake: " + dial_->LastError(), now);
    return;
  }
  if (dial_->Alpn() != alpn_) {
    DialFailed(Err::kTls, absl::StrCat("ALPN chose '", std::string(dial_->Alpn()), "'"), now);
    return;
  }
  phase_ = Phase::kOpen;
  SetWantWrite(false);
  OnOpen(std::move(dial_), now);
}

}  // namespace sluice::bench::soak
