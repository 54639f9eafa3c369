#pragma once

#include "core/engine/slice.h"
#include "core/proxy/exchange.h"

namespace sluice::core {

class RequestRecord;
class Stream;

// The raw byte stream both ways once the upstream answered 101 Switching
// Protocols (a WebSocket, or any upgrade): what the upstream sends goes to
// the client as it comes (counted as response bytes), what the client sends
// goes up the link the upgrade came over, and reading the client pauses
// while that link is congested. The relay owns the link and forwards its
// events here; the tunnel ends when either side closes.
class WebSocketTunnel {
 public:
  WebSocketTunnel(Downstream* downstream, RequestRecord* record)
      : downstream_(downstream), record_(record) {}

  // The 101 came: from now on the link carries tunnel bytes.
  void Open() { open_ = true; }
  bool open() const { return open_; }

  // Bytes from the upstream.
  void FromUpstream(Slice data);
  // Bytes from the client (they may come with the 101 itself, before Open),
  // written to `link`.
  void FromClient(Stream* link, Slice data);
  // `link` took some of what it was given.
  void OnLinkWriteProgress(Stream* link);
  // The upstream closed its side: the client's ends too.
  void UpstreamEnded() { downstream_->EndTunnel(); }

 private:
  Downstream* downstream_;
  RequestRecord* record_;
  bool open_ = false;
  bool client_paused_ = false;
};

}  // namespace sluice::core
