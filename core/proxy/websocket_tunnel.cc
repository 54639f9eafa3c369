#include "core/proxy/websocket_tunnel.h"

#include "core/engine/stream.h"
#include "core/proxy/request_record.h"

namespace sluice::core {

void WebSocketTunnel::FromUpstream(Slice data) {
  record_->AddBodyBytes(data.size());
  downstream_->SendTunnelData(std::move(data));
}

void WebSocketTunnel::FromClient(Stream* link, Slice data) {
  link->Write(std::move(data));
  if (link->congested() && !client_paused_) {
    client_paused_ = true;
    downstream_->PauseReading();
  }
}

void WebSocketTunnel::OnLinkWriteProgress(Stream* link) {
  if (client_paused_ && link->drained()) {
    client_paused_ = false;
    downstream_->ResumeReading();
  }
}

}  // namespace sluice::core
