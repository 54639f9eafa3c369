// Fair sharing of generation slots under load and cancellation, through the
// real binary in front of a simulator that runs 2 generations at once
// (slots=2): a greedy key with 20 streamed generations and 4 polite keys,
// over HTTP/1.1 and h2c, with clients on both workers of --threads=2; HTTP/2
// streams reset and connections closed while they wait; bodies past what
// sluice holds while a request waits; slots given back exactly once after
// many cancels, waiting and running; the wait bound over HTTP/2.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "policy/ip_set.h"
#include "tests/integration/fair_queue_fixture.h"
#include "tests/integration/h2_frames.h"
#include "tests/integration/timing.h"

namespace sluice::integration {
namespace {

// The load tests' generations: 10 tokens 40 ms apart, 400 ms each.
constexpr int kTokens = 10;
constexpr int kDelayMs = 40;
constexpr absl::Duration kGeneration = absl::Milliseconds(kTokens * kDelayMs);

// Loopback addresses (127.0.0.2 on) that sluice's steering gives to worker
// `worker` of 2: a test picks its clients' workers by their addresses.
std::vector<std::string> AddressesOnWorker(uint32_t worker, size_t n) {
  std::vector<std::string> out;
  for (int x = 2; x < 255 && out.size() < n; ++x) {
    const std::string a = absl::StrCat("127.0.0.", x);
    std::optional<policy::IpAddress> ip = policy::IpAddress::Parse(a);
    if (ip && policy::SteeringSlot(policy::SteeringHash(*ip), 2) == worker) out.push_back(a);
  }
  return out;
}

// For each client address, the workers that accepted its connections, from
// sluice's debug log ("... [debug] wN: *CONN client ADDR: accepted").
std::map<std::string, std::set<std::string>> AcceptingWorkers(const std::string& log) {
  std::map<std::string, std::set<std::string>> out;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (!absl::StrContains(line, ": accepted")) continue;
    std::vector<std::string> words = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (words.size() < 8 || words[6].empty()) continue;
    words[6].pop_back();  // ':'
    out[words[6]].insert(words[3]);
  }
  return out;
}

Headers GenerationHeaders(const std::string& key, int tokens, int delay_ms) {
  return {{"authorization", "Bearer " + key},
          {"content-type", "application/json"},
          {"x-sim-tokens", absl::StrCat(tokens)},
          {"x-sim-token-delay-ms", absl::StrCat(delay_ms)}};
}
constexpr absl::string_view kStreamedBody = R"({"model":"llama3","prompt":"hi"})";

// A streamed (NDJSON) generation over HTTP/1.1.
std::string StreamGenerate(const std::string& key, int tokens, int delay_ms) {
  return BuildRequest("POST", "/api/generate", GenerationHeaders(key, tokens, delay_ms),
                      kStreamedBody);
}

// An /api/embed body of at least `min_bytes` whose "input" array has
// `*inputs` strings of varied lengths: the simulator answers one vector per
// element and prompt_eval_count 8 per element, so a body cut, doubled or
// shuffled at any piece boundary shows in its answer.
std::string LargeEmbedBody(size_t min_bytes, int* inputs) {
  std::string body = R"({"model":"llama3","input":[)";
  int n = 0;
  while (body.size() < min_bytes) {
    absl::StrAppend(&body, n ? "," : "", "\"", n, ":",
                    std::string(60 + (n * 37) % 190, static_cast<char>('a' + n % 26)), "\"");
    ++n;
  }
  body += "]}";
  *inputs = n;
  return body;
}

// Whether `body` is the simulator's /api/embed answer for `inputs` inputs.
bool EmbedAnswerCounts(absl::string_view body, int inputs) {
  std::optional<JsonValue> json = JsonValue::Parse(body);
  if (!json.has_value()) return false;
  const JsonValue* embeddings = json->Get("embeddings");
  return embeddings != nullptr && static_cast<int>(embeddings->array().size()) == inputs &&
         json->GetInt("prompt_eval_count").value_or(-1) == 8 * inputs;
}

// What a client saw of one generation.
struct Outcome {
  int status = 0;
  int64_t wait_ms = -1;    // X-Queue-Wait-Ms
  absl::Duration to_head;  // from sending the request to the response head
  absl::Time head;         // when the head arrived
  absl::Time done;         // when the response ended
  bool complete = false;   // the final "done" object arrived
  std::string error;
};

// One streamed generation on an HTTP/1.1 connection (kept alive).
Outcome H1Generation(HttpConnection* c, const std::string& key, int tokens, int delay_ms) {
  Outcome o;
  const absl::Time sent = absl::Now();
  absl::Status st = c->Send(StreamGenerate(key, tokens, delay_ms));
  absl::StatusOr<HttpResponse> head = st.ok() ? c->ReadHead(absl::Seconds(30)) : st;
  if (!head.ok()) {
    o.error = head.status().ToString();
    return o;
  }
  o.head = absl::Now();
  o.to_head = o.head - sent;
  o.status = head->status;
  absl::SimpleAtoi(head->Header("X-Queue-Wait-Ms").value_or(""), &o.wait_ms);
  HttpResponse r = *std::move(head);
  st = c->ReadBody(&r, absl::Seconds(30));
  o.done = absl::Now();
  o.complete = st.ok() && absl::StrContains(r.body, "\"done\":true");
  if (!st.ok()) o.error = st.ToString();
  return o;
}

// One stream of an H2Client as it saw it.
struct H2Stream {
  int status = 0;
  h2::HeaderList headers;
  std::string body;
  absl::Time sent, head, end;
  bool ended = false;             // END_STREAM from sluice
  std::optional<uint32_t> reset;  // RST_STREAM from sluice

  std::optional<std::string> Header(absl::string_view name) const {
    for (const auto& [n, v] : headers) {
      if (n == name) return v;
    }
    return std::nullopt;
  }
  bool over() const { return ended || reset.has_value(); }
  Outcome ToOutcome() const {
    Outcome o;
    o.status = status;
    absl::SimpleAtoi(Header("x-queue-wait-ms").value_or(""), &o.wait_ms);
    o.head = head;
    o.to_head = head - sent;
    o.done = end;
    o.complete = ended && absl::StrContains(body, "\"done\":true");
    if (!ended) o.error = reset ? h2::ErrorName(*reset) : "no END_STREAM";
    return o;
  }
};

// An h2c (prior knowledge) client over the raw frame connection: it keeps
// each stream's answer, opens its own windows wide, and sends request
// bodies within the windows sluice grants (which stay shut while a request
// waits past what sluice holds of its body).
class H2Client {
 public:
  static absl::StatusOr<std::unique_ptr<H2Client>> Open(int port, const std::string& source = "") {
    h2::Connection::Options options;
    options.source_address = source;
    auto conn = h2::Connection::Connect(port, options);
    if (!conn.ok()) return conn.status();
    std::unique_ptr<H2Client> c(new H2Client(*std::move(conn)));
    absl::Status st = c->conn_->SendPreface({{h2::kSettingsInitialWindowSize, 1 << 24}});
    if (st.ok()) st = c->conn_->Send(h2::WindowUpdateFrame(0, 1 << 30));
    if (!st.ok()) return st;
    if (!c->ReadUntil([&] { return c->got_settings_; }, absl::Seconds(5))) {
      return absl::DeadlineExceededError("no SETTINGS from sluice");
    }
    return c;
  }

  // A request on stream `id`: HEADERS, then the body (END_STREAM with its
  // last DATA frame unless `end` is false).
  absl::Status Request(uint32_t id, absl::string_view method, absl::string_view path,
                       const Headers& fields, absl::string_view body = "", bool end = true) {
    h2::HeaderList all = fields;
    const bool has_length = std::any_of(all.begin(), all.end(),
                                        [](const auto& f) { return f.first == "content-length"; });
    if (!body.empty() && end && !has_length) {
      all.emplace_back("content-length", absl::StrCat(body.size()));
    }
    streams_[id].sent = absl::Now();
    window_[id] = initial_window_;
    absl::Status st = conn_->Send(h2::HeadersFrame(
        id, h2::HpackBlock(h2::RequestFields(method, path, all)), end && body.empty()));
    if (!st.ok() || body.empty()) return st;
    return SendBody(id, body, end, absl::Seconds(30));
  }
  absl::Status Generate(uint32_t id, const std::string& key, int tokens, int delay_ms) {
    return Request(id, "POST", "/api/generate", GenerationHeaders(key, tokens, delay_ms),
                   kStreamedBody);
  }
  absl::Status Send(absl::string_view frames) { return conn_->Send(frames); }

  // DATA frames of `data` on stream `id` as the windows allow, reading
  // frames (and so window updates) meanwhile.
  absl::Status SendBody(uint32_t id, absl::string_view data, bool end, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!data.empty()) {
      const int64_t room = std::min<int64_t>({conn_window_, window_[id], 16384});
      if (room <= 0) {
        absl::StatusOr<h2::Frame> f = conn_->ReadFrame(deadline - absl::Now());
        if (!f.ok()) return f.status();
        Handle(*f);
        continue;
      }
      const absl::string_view piece = data.substr(0, static_cast<size_t>(room));
      data.remove_prefix(piece.size());
      conn_window_ -= piece.size();
      window_[id] -= piece.size();
      absl::Status st = conn_->Send(h2::DataFrame(id, piece, end && data.empty()));
      if (!st.ok()) return st;
    }
    return absl::OkStatus();
  }

  // Reads frames until `done()`, the end of the connection or the
  // deadline; returns done().
  bool ReadUntil(const std::function<bool()>& done, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!done()) {
      absl::StatusOr<h2::Frame> f = conn_->ReadFrame(deadline - absl::Now());
      if (!f.ok()) {
        if (!absl::IsDeadlineExceeded(f.status())) closed_ = true;
        return done();
      }
      Handle(*f);
    }
    return true;
  }
  // Until every stream of `ids` ended (or was reset).
  bool AwaitEnd(const std::vector<uint32_t>& ids, absl::Duration timeout) {
    return ReadUntil(
        [&] {
          for (uint32_t id : ids) {
            if (!streams_[id].over()) return false;
          }
          return true;
        },
        timeout);
  }
  bool AwaitHead(uint32_t id, absl::Duration timeout) {
    return ReadUntil([&] { return streams_[id].status != 0 || streams_[id].over(); }, timeout);
  }
  // Reads whatever comes for `d`.
  void ReadFor(absl::Duration d) {
    ReadUntil([] { return false; }, d);
  }

  const H2Stream& stream(uint32_t id) { return streams_[id]; }
  bool goaway() const { return goaway_; }
  bool closed() const { return closed_; }
  void Close(bool reset = false) { conn_->Close(reset); }

 private:
  explicit H2Client(std::unique_ptr<h2::Connection> conn) : conn_(std::move(conn)) {}

  void Handle(const h2::Frame& f) {
    const absl::string_view p = f.payload;
    switch (f.type) {
      case h2::kSettings:
        if (f.flags & h2::kFlagAck) break;
        for (size_t i = 0; i + 6 <= p.size(); i += 6) {
          const uint16_t id = static_cast<uint16_t>((static_cast<uint8_t>(p[i]) << 8) |
                                                    static_cast<uint8_t>(p[i + 1]));
          const int64_t v = Read32(p.substr(i + 2));
          if (id != h2::kSettingsInitialWindowSize) continue;
          for (auto& [stream, window] : window_) window += v - initial_window_;
          initial_window_ = v;
        }
        got_settings_ = true;
        (void)conn_->Send(h2::SettingsAckFrame());
        break;
      case h2::kWindowUpdate:
        if (p.size() < 4) break;
        (f.stream_id == 0 ? conn_window_ : window_[f.stream_id]) += Read32(p) & 0x7fffffff;
        break;
      case h2::kHeaders: {
        H2Stream& s = streams_[f.stream_id];
        if (s.status == 0 || s.status < 200) {
          s.status = f.Status();
          s.headers = f.headers;
          s.head = f.arrival;
        }
        if (f.flags & h2::kFlagEndStream) Ended(&s, f.arrival);
        break;
      }
      case h2::kData: {
        H2Stream& s = streams_[f.stream_id];
        absl::string_view data = p;
        if ((f.flags & h2::kFlagPadded) && !data.empty()) {
          const size_t pad = static_cast<uint8_t>(data[0]);
          data = data.substr(1, data.size() > pad + 1 ? data.size() - 1 - pad : 0);
        }
        s.body.append(data.data(), data.size());
        if (f.flags & h2::kFlagEndStream) Ended(&s, f.arrival);
        break;
      }
      case h2::kRstStream:
        streams_[f.stream_id].reset = f.ErrorCode();
        streams_[f.stream_id].end = f.arrival;
        break;
      case h2::kPing:
        if (!(f.flags & h2::kFlagAck) && p.size() == 8) {
          uint64_t opaque = 0;
          for (char c : p) opaque = (opaque << 8) | static_cast<uint8_t>(c);
          (void)conn_->Send(h2::PingFrame(opaque, true));
        }
        break;
      case h2::kGoaway:
        goaway_ = true;
        break;
      default:
        break;
    }
  }
  static void Ended(H2Stream* s, absl::Time at) {
    s->ended = true;
    s->end = at;
  }
  static int64_t Read32(absl::string_view p) {
    return (int64_t{static_cast<uint8_t>(p[0])} << 24) | (static_cast<uint8_t>(p[1]) << 16) |
           (static_cast<uint8_t>(p[2]) << 8) | static_cast<uint8_t>(p[3]);
  }

  std::unique_ptr<h2::Connection> conn_;
  std::map<uint32_t, H2Stream> streams_;
  int64_t conn_window_ = 65535;  // what sluice lets this client send
  int64_t initial_window_ = 65535;
  std::map<uint32_t, int64_t> window_;
  bool got_settings_ = false;
  bool goaway_ = false;
  bool closed_ = false;
};

class FairQueueLoad : public FairQueue {
 protected:
  ModelStats Model() {
    absl::StatusOr<ModelStats> s = FetchModelStats(sim_port());
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : ModelStats{};
  }

  // That every address of `addrs` was accepted by the worker its steering
  // names, and that both workers were used.
  void ExpectBothWorkers(const std::vector<std::string>& addrs) {
    const auto accepted = AcceptingWorkers(sluice_->Stderr());
    std::set<std::string> used;
    for (const std::string& a : addrs) {
      auto it = accepted.find(a);
      ASSERT_NE(it, accepted.end()) << a << " never accepted";
      const std::string want = absl::StrCat(
          "w", policy::SteeringSlot(policy::SteeringHash(*policy::IpAddress::Parse(a)), 2), ":");
      EXPECT_EQ(it->second, std::set<std::string>{want}) << a;
      used.insert(it->second.begin(), it->second.end());
    }
    EXPECT_EQ(used, (std::set<std::string>{"w0:", "w1:"}));
  }
};

// The greedy/polite workload: what each client saw.
struct Load {
  std::vector<Outcome> greedy;
  std::vector<std::vector<Outcome>> polite;  // per polite key, in order
};
constexpr int kGreedy = 20;
constexpr int kPolite = 4;
constexpr int kPoliteRounds = 3;
// A polite key's pause between its requests: about a generation, a little
// different per key so that they do not all come back at once.
absl::Duration PoliteThink(int k) { return kGeneration + absl::Milliseconds(50) * k; }

// The greedy key's 20 generations fill the queue at once (2 run, 18 wait: a
// FIFO would put anyone else behind 18 x 400 ms / 2 = 3.6 s); 300 ms later
// 4 polite keys (100 ms apart) each send 3 generations one at a time,
// about a generation's time apart. Every request completes; nothing waits
// in the simulator, which never runs more than 2; each polite request
// waits about a generation, far less than the greedy backlog; the polite
// keys are done while the greedy backlog is still being served.
void CheckLoad(const Load& load, const ModelStats& model) {
  int greedy_ok = 0;
  absl::Time greedy_last = absl::InfinitePast();
  for (const Outcome& o : load.greedy) {
    greedy_ok += o.status == 200 && o.complete;
    EXPECT_EQ(o.status, 200) << o.error;
    EXPECT_TRUE(o.complete) << o.error;
    greedy_last = std::max(greedy_last, o.done);
  }
  EXPECT_EQ(greedy_ok, kGreedy);
  // Two generations in turn on each slot, with room for a loaded machine
  // (a sanitizer build slows the proxy, not the simulator's clock).
  const absl::Duration max_wait = 2 * kGeneration + absl::Milliseconds(400) * TimingSlack();
  absl::Duration sum;
  int n = 0;
  int64_t max_seen = -1;
  absl::Time polite_last = absl::InfinitePast();
  for (size_t k = 0; k < load.polite.size(); ++k) {
    for (const Outcome& o : load.polite[k]) {
      EXPECT_EQ(o.status, 200) << "polite " << k << ": " << o.error;
      EXPECT_TRUE(o.complete) << "polite " << k << ": " << o.error;
      EXPECT_GE(o.wait_ms, 0) << "polite " << k << ": no X-Queue-Wait-Ms";
      EXPECT_LE(absl::Milliseconds(o.wait_ms), max_wait) << "polite " << k;
      EXPECT_LE(o.to_head, max_wait + absl::Milliseconds(200)) << "polite " << k;
      sum += absl::Milliseconds(o.wait_ms);
      max_seen = std::max(max_seen, o.wait_ms);
      ++n;
      polite_last = std::max(polite_last, o.done);
    }
  }
  EXPECT_EQ(n, kPolite * kPoliteRounds);
  if (n > 0) {
    EXPECT_LE(sum / n, kGeneration + absl::Milliseconds(200) * TimingSlack()) << "mean polite wait";
  }
  // The polite keys got their generations while greedy was still backlogged.
  int greedy_done_before = 0;
  for (const Outcome& o : load.greedy) greedy_done_before += o.done <= polite_last;
  std::cout << "polite waits: max " << max_seen << " ms, mean "
            << (n > 0 ? absl::ToInt64Milliseconds(sum / n) : -1) << " ms (bound "
            << absl::ToInt64Milliseconds(max_wait)
            << " ms); greedy done when the last polite was: " << greedy_done_before << " of "
            << kGreedy << "; polite done " << absl::ToInt64Milliseconds(greedy_last - polite_last)
            << " ms before greedy\n";
  EXPECT_LT(greedy_done_before, kGreedy - 2) << "greedy's backlog was served before polite keys";
  EXPECT_LT(polite_last, greedy_last);
  // sluice kept to 2 at once across both workers: nothing queued in Ollama.
  EXPECT_EQ(model.max_running, 2) << model.text;
  EXPECT_EQ(model.queued, 0) << model.text;
  EXPECT_EQ(model.requests, kGreedy + kPolite * kPoliteRounds) << model.text;
}

TEST_F(FairQueueLoad, GreedyAndPoliteKeysAcrossTwoWorkersHttp1) {
  const std::string greedy = AddKey("greedy");
  std::vector<std::string> polite;
  for (int k = 0; k < kPolite; ++k) polite.push_back(AddKey(absl::StrCat("polite", k)));
  ASSERT_NO_FATAL_FAILURE(Start({"--threads=2", "--log_level=debug"}));
  const std::vector<std::string> w0 = AddressesOnWorker(0, 3), w1 = AddressesOnWorker(1, 3);
  ASSERT_EQ(w0.size() + w1.size(), 6u);
  // Greedy from one address on each worker, polite keys two on each.
  const std::vector<std::string> greedy_from = {w0[0], w1[0]};
  const std::vector<std::string> polite_from = {w0[1], w1[1], w0[2], w1[2]};
  Load load;
  load.greedy.resize(kGreedy);
  load.polite.assign(kPolite, std::vector<Outcome>(kPoliteRounds));
  std::vector<std::thread> threads;
  for (int i = 0; i < kGreedy; ++i) {
    threads.emplace_back([&, i] {
      auto c = HttpConnection::ConnectFrom(proxy_port(), greedy_from[i % 2]);
      if (!c.ok()) {
        load.greedy[i].error = c.status().ToString();
        return;
      }
      load.greedy[i] = H1Generation(c->get(), greedy, kTokens, kDelayMs);
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  for (int k = 0; k < kPolite; ++k) {
    threads.emplace_back([&, k] {
      absl::SleepFor(absl::Milliseconds(100) * k);
      auto c = HttpConnection::ConnectFrom(proxy_port(), polite_from[k]);
      for (int r = 0; r < kPoliteRounds && c.ok(); ++r) {
        load.polite[k][r] = H1Generation(c->get(), polite[k], kTokens, kDelayMs);
        absl::SleepFor(PoliteThink(k));
      }
      if (!c.ok()) load.polite[k][0].error = c.status().ToString();
    });
  }
  for (std::thread& t : threads) t.join();
  CheckLoad(load, Model());
  std::vector<std::string> all = greedy_from;
  all.insert(all.end(), polite_from.begin(), polite_from.end());
  ExpectBothWorkers(all);
}

TEST_F(FairQueueLoad, GreedyAndPoliteKeysAcrossTwoWorkersHttp2) {
  const std::string greedy = AddKey("greedy");
  std::vector<std::string> polite;
  for (int k = 0; k < kPolite; ++k) polite.push_back(AddKey(absl::StrCat("polite", k)));
  ASSERT_NO_FATAL_FAILURE(Start({"--threads=2", "--log_level=debug"}));
  const std::vector<std::string> w0 = AddressesOnWorker(0, 3), w1 = AddressesOnWorker(1, 3);
  ASSERT_EQ(w0.size() + w1.size(), 6u);
  const std::vector<std::string> greedy_from = {w0[0], w1[0]};
  const std::vector<std::string> polite_from = {w0[1], w1[1], w0[2], w1[2]};
  Load load;
  load.greedy.resize(kGreedy);
  load.polite.assign(kPolite, std::vector<Outcome>(kPoliteRounds));
  std::vector<std::thread> threads;
  // Greedy: one connection on each worker with 10 streams each.
  for (int c = 0; c < 2; ++c) {
    threads.emplace_back([&, c] {
      auto client = H2Client::Open(proxy_port(), greedy_from[c]);
      if (!client.ok()) {
        load.greedy[c].error = client.status().ToString();
        return;
      }
      std::vector<uint32_t> ids;
      for (int s = 0; s < kGreedy / 2; ++s) {
        ids.push_back(1 + 2 * s);
        if (!(*client)->Generate(ids.back(), greedy, kTokens, kDelayMs).ok()) break;
      }
      (*client)->AwaitEnd(ids, absl::Seconds(40));
      for (size_t s = 0; s < ids.size(); ++s) {
        load.greedy[c * kGreedy / 2 + s] = (*client)->stream(ids[s]).ToOutcome();
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(300));
  for (int k = 0; k < kPolite; ++k) {
    threads.emplace_back([&, k] {
      absl::SleepFor(absl::Milliseconds(100) * k);
      auto client = H2Client::Open(proxy_port(), polite_from[k]);
      if (!client.ok()) {
        load.polite[k][0].error = client.status().ToString();
        return;
      }
      for (int r = 0; r < kPoliteRounds; ++r) {
        const uint32_t id = 1 + 2 * r;
        if (!(*client)->Generate(id, polite[k], kTokens, kDelayMs).ok()) break;
        (*client)->AwaitEnd({id}, absl::Seconds(30));
        load.polite[k][r] = (*client)->stream(id).ToOutcome();
        absl::SleepFor(PoliteThink(k));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  CheckLoad(load, Model());
  std::vector<std::string> all = greedy_from;
  all.insert(all.end(), polite_from.begin(), polite_from.end());
  ExpectBothWorkers(all);
}

// Two streams of one connection hold the slots; of the two waiting behind
// them the first is reset. It leaves the queue at once (with
// --queue_per_key=2, the stream opened right after the reset is queued,
// not refused), never reaches the simulator, and the connection's other
// streams complete, the second waiter taking the first free slot.
TEST_F(FairQueueLoad, H2StreamResetWhileWaitingLeavesTheQueueAtOnce) {
  const std::string k = AddKey("k");
  ASSERT_NO_FATAL_FAILURE(Start({"--queue_per_key=2"}));
  IT_ASSERT_OK_AND_ASSIGN(auto c, H2Client::Open(proxy_port()));
  IT_ASSERT_OK(c->Generate(1, k, 8, 100));   // the first slot frees at ~800 ms
  IT_ASSERT_OK(c->Generate(3, k, 14, 100));  // the second at ~1400 ms
  ASSERT_TRUE(c->AwaitHead(1, absl::Seconds(5)) && c->AwaitHead(3, absl::Seconds(5)));
  IT_ASSERT_OK(c->Generate(5, k, 1, 1));
  IT_ASSERT_OK(c->Generate(7, k, 2, 50));
  c->ReadFor(absl::Milliseconds(200));
  EXPECT_EQ(c->stream(5).status, 0);
  EXPECT_EQ(c->stream(7).status, 0);
  EXPECT_EQ(SimRequests(), 2);
  IT_ASSERT_OK(c->Send(h2::RstStreamFrame(5, h2::kCancel)));
  IT_ASSERT_OK(c->Generate(9, k, 2, 50));
  ASSERT_TRUE(c->AwaitEnd({1, 3, 7, 9}, absl::Seconds(20)));
  for (uint32_t id : {1u, 3u, 7u, 9u}) {
    EXPECT_EQ(c->stream(id).status, 200) << id << " " << c->stream(id).body;
    EXPECT_TRUE(c->stream(id).ToOutcome().complete) << id;
  }
  EXPECT_EQ(c->stream(5).status, 0);  // nothing answered on the reset stream
  // 7 took the first slot that freed (FIFO within the key), 9 the slot 7
  // gave back.
  EXPECT_LE(c->stream(7).end, c->stream(9).head);
  EXPECT_LT(c->stream(9).head, c->stream(3).end);
  EXPECT_FALSE(c->goaway());
  EXPECT_EQ(SimRequests(), 4);  // 1, 3, 7, 9: never 5
  ModelStats m = Model();
  EXPECT_EQ(m.max_running, 2) << m.text;
  EXPECT_EQ(m.queued, 0) << m.text;
}

// An HTTP/2 connection closed (FIN, then another with RST) while its
// streams wait: they leave the queue at once and never reach the simulator.
TEST_F(FairQueueLoad, H2ConnectionClosedWhileStreamsWaitLeavesTheQueue) {
  const std::string a = AddKey("a");
  const std::string k = AddKey("k");
  ASSERT_NO_FATAL_FAILURE(Start({"--queue_per_key=2"}));
  std::vector<std::unique_ptr<HttpConnection>> holders;
  std::vector<HttpResponse> heads;
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto h, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(h->Send(StreamGenerate(a, 12, 100)));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, h->ReadHead(absl::Seconds(5)));
    EXPECT_EQ(head.status, 200);
    holders.push_back(std::move(h));
    heads.push_back(std::move(head));
  }
  for (bool reset : {false, true}) {
    IT_ASSERT_OK_AND_ASSIGN(auto gone, H2Client::Open(proxy_port()));
    IT_ASSERT_OK(gone->Generate(1, k, 1, 1));
    IT_ASSERT_OK(gone->Generate(3, k, 1, 1));
    gone->ReadFor(absl::Milliseconds(150));
    EXPECT_EQ(gone->stream(1).status, 0);
    gone->Close(reset);
  }
  absl::SleepFor(absl::Milliseconds(100));
  // k's two places are free again: two more wait (not 429), then run.
  IT_ASSERT_OK_AND_ASSIGN(auto c, H2Client::Open(proxy_port()));
  IT_ASSERT_OK(c->Generate(1, k, 2, 20));
  IT_ASSERT_OK(c->Generate(3, k, 2, 20));
  ASSERT_TRUE(c->AwaitEnd({1, 3}, absl::Seconds(20)));
  for (uint32_t id : {1u, 3u}) {
    EXPECT_EQ(c->stream(id).status, 200) << c->stream(id).body;
    EXPECT_GT(c->stream(id).ToOutcome().wait_ms, 300) << "it waited for a holder";
  }
  for (size_t i = 0; i < holders.size(); ++i) {
    IT_ASSERT_OK(holders[i]->ReadBody(&heads[i], absl::Seconds(10)));
    EXPECT_TRUE(absl::StrContains(heads[i].body, "\"done\":true"));
  }
  EXPECT_EQ(SimRequests(), 4);  // the holders and c's two
  absl::StatusOr<SimStats> s = FetchSimStats(sim_port());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->aborted_streams, 0);
}

// A 300 KiB body sent while its request waits (sluice holds 64 KiB of it,
// the rest waits in the client's socket or HTTP/2 window): once granted
// the simulator gets all of it (one embedding per input), and the request
// kept its place: the key's request queued after it (a 1 s generation)
// runs after it.
class LargeBody : public FairQueueLoad {
 protected:
  // Two generations of key "a" hold the slots, one ending at ~600 ms, the
  // other at ~1500 ms.
  void HoldSlots() {
    a_ = AddKey("a");
    p_ = AddKey("p");
    ASSERT_NO_FATAL_FAILURE(Start());
    for (int tokens : {6, 15}) {
      IT_ASSERT_OK_AND_ASSIGN(auto h, HttpConnection::Connect(proxy_port()));
      IT_ASSERT_OK(h->Send(StreamGenerate(a_, tokens, 100)));
      IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, h->ReadHead(absl::Seconds(5)));
      EXPECT_EQ(head.status, 200);
      holders_.push_back(std::move(h));
      heads_.push_back(std::move(head));
    }
    start_ = absl::Now();
    body_ = LargeEmbedBody(300 * 1024, &inputs_);
  }
  // The embed got the first slot that freed (~600 ms), and the key's
  // second request waited for it; the simulator saw both and the holders,
  // never more than 2 at once.
  void Check(const Outcome& big, absl::string_view big_body, const Outcome& small) {
    EXPECT_EQ(big.status, 200) << big.error;
    EXPECT_TRUE(EmbedAnswerCounts(big_body, inputs_)) << big_body.substr(0, 300);
    EXPECT_EQ(small.status, 200) << small.error;
    EXPECT_TRUE(small.complete);
    // Both ran before the second holder ended (~1500 ms): the embed on the
    // slot that freed first, the 1 s generation on the one the embed gave
    // back. Had the generation gone first, the embed would have waited for
    // the second holder.
    EXPECT_LT(big.done - start_, absl::Milliseconds(1300)) << "not the first slot";
    EXPECT_LT(small.head - start_, absl::Milliseconds(1300));
    ASSERT_NO_FATAL_FAILURE(FinishHolders());
    EXPECT_EQ(SimRequests(), 4);
    ModelStats m = Model();
    EXPECT_EQ(m.max_running, 2) << m.text;
    EXPECT_EQ(m.queued, 0) << m.text;
  }
  // The rest of the holders' answers.
  void FinishHolders() {
    for (size_t i = 0; i < holders_.size(); ++i) {
      IT_ASSERT_OK(holders_[i]->ReadBody(&heads_[i], absl::Seconds(10)));
      EXPECT_TRUE(absl::StrContains(heads_[i].body, "\"done\":true"));
    }
  }
  static std::string EmbedHead(const std::string& key, size_t length) {
    return BuildRequest("POST", "/api/embed",
                        {{"Authorization", "Bearer " + key},
                         {"Content-Type", "application/json"},
                         {"Content-Length", absl::StrCat(length)}});
  }

  std::string a_, p_, body_;
  int inputs_ = 0;
  absl::Time start_;
  std::vector<std::unique_ptr<HttpConnection>> holders_;
  std::vector<HttpResponse> heads_;
};

TEST_F(LargeBody, ArrivesWholeOnceGrantedHttp1) {
  ASSERT_NO_FATAL_FAILURE(HoldSlots());
  IT_ASSERT_OK_AND_ASSIGN(auto big, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(big->Send(EmbedHead(p_, body_.size()) + body_.substr(0, 1000)));
  absl::SleepFor(absl::Milliseconds(100));  // queued: the model is in the first bytes
  Outcome small;
  std::thread later([&] {
    auto c = HttpConnection::Connect(proxy_port());
    if (c.ok()) small = H1Generation(c->get(), p_, 10, 100);
  });
  // The rest of the body, while it waits: sluice stops reading after 64 KiB,
  // so this blocks until the grant unless the socket buffers take it all.
  IT_ASSERT_OK(big->Send(absl::string_view(body_).substr(1000)));
  auto r = big->ReadResponse(absl::Seconds(20));
  Outcome b;
  if (r.ok()) {
    b.status = r->status;
    b.done = absl::Now();
  } else {
    b.error = r.status().ToString();
  }
  later.join();
  Check(b, r.ok() ? r->body : "", small);
}

TEST_F(LargeBody, ArrivesWholeOnceGrantedHttp2) {
  ASSERT_NO_FATAL_FAILURE(HoldSlots());
  IT_ASSERT_OK_AND_ASSIGN(auto c, H2Client::Open(proxy_port()));
  // The head and the first DATA (the model) now; the second request of the
  // key; then the rest of the body within the windows sluice opens.
  IT_ASSERT_OK(c->Request(1, "POST", "/api/embed",
                          {{"authorization", "Bearer " + p_},
                           {"content-type", "application/json"},
                           {"content-length", absl::StrCat(body_.size())}},
                          absl::string_view(body_).substr(0, 1000), /*end=*/false));
  c->ReadFor(absl::Milliseconds(100));
  IT_ASSERT_OK(c->Generate(3, p_, 10, 100));
  c->ReadFor(absl::Milliseconds(100));
  EXPECT_EQ(SimRequests(), 2);
  IT_ASSERT_OK(c->SendBody(1, absl::string_view(body_).substr(1000), true, absl::Seconds(20)));
  // sluice kept the stream's window shut past 64 KiB until the grant, when
  // the first holder ended (~600 ms).
  EXPECT_GE(absl::Now() - start_, absl::Milliseconds(450));
  ASSERT_TRUE(c->AwaitEnd({1, 3}, absl::Seconds(20)));
  Outcome b;
  b.status = c->stream(1).status;
  b.done = c->stream(1).end;
  Check(b, c->stream(1).body, c->stream(3).ToOutcome());
  EXPECT_FALSE(c->goaway());
}

// Streams whose bodies sluice held back while they waited (its window
// shut past 64 KiB) and that then ended waiting, reset by the client or
// timed out: the bytes the connection's window lent them come back, so
// after more than the connection's 1 MiB window of such bodies the
// connection still carries a 300 KiB body; none of them reached the
// simulator.
TEST_F(LargeBody, CancelledWaitersGiveTheConnectionWindowBack) {
  a_ = AddKey("a");
  p_ = AddKey("p");
  ASSERT_NO_FATAL_FAILURE(Start({"--queue_timeout=400ms"}));
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto h, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(h->Send(StreamGenerate(a_, 45, 100)));
    holders_.push_back(std::move(h));
  }
  body_ = LargeEmbedBody(300 * 1024, &inputs_);
  const Headers fields = {{"authorization", "Bearer " + p_},
                          {"content-type", "application/json"},
                          {"content-length", absl::StrCat(body_.size())}};
  const absl::string_view first = absl::string_view(body_).substr(0, 1000);
  const absl::string_view rest = absl::string_view(body_).substr(1000);
  IT_ASSERT_OK_AND_ASSIGN(auto c, H2Client::Open(proxy_port()));
  uint32_t id = 1;
  for (int round = 0; round < 16; ++round, id += 2) {
    IT_ASSERT_OK(c->Request(id, "POST", "/api/embed", fields, first, /*end=*/false));
    const bool reset = round < 12;
    // It waits, so its window shuts before the body is in.
    absl::Status st = c->SendBody(id, rest, true, absl::Milliseconds(reset ? 150 : 700));
    EXPECT_TRUE(absl::IsDeadlineExceeded(st)) << round << ": " << st;
    if (reset) {
      IT_ASSERT_OK(c->Send(h2::RstStreamFrame(id, h2::kCancel)));
    } else {
      ASSERT_TRUE(c->AwaitEnd({id}, absl::Seconds(5))) << round;
      EXPECT_EQ(c->stream(id).status, 503) << round;
    }
  }
  EXPECT_EQ(SimRequests(), 2);  // the holders only
  for (auto& h : holders_) {
    auto r = h->ReadResponse(absl::Seconds(10));
    ASSERT_TRUE(r.ok()) << r.status();
  }
  IT_ASSERT_OK(c->Request(id, "POST", "/api/embed", fields, body_));
  ASSERT_TRUE(c->AwaitEnd({id}, absl::Seconds(10)));
  EXPECT_EQ(c->stream(id).status, 200) << c->stream(id).body.substr(0, 300);
  EXPECT_TRUE(EmbedAnswerCounts(c->stream(id).body, inputs_));
  EXPECT_FALSE(c->goaway());
  EXPECT_EQ(SimRequests(), 3);
}

// HTTP/1.1 clients that leave while sluice holds part of their bodies and
// no longer reads them (one with FIN, one with RST): sluice sees it within
// a second or when their turn comes, whichever is first (README), and the
// simulator gets no request of theirs; their slots come back, so afterwards
// 2 new generations start at once and nothing is left waiting.
TEST_F(LargeBody, Http1ClientThatLeavesWithItsBodyHeldNeverCompletesUpstream) {
  ASSERT_NO_FATAL_FAILURE(HoldSlots());
  for (bool reset : {false, true}) {
    IT_ASSERT_OK_AND_ASSIGN(auto gone, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(gone->Send(EmbedHead(p_, body_.size()) + body_.substr(0, 200 * 1024)));
    absl::SleepFor(absl::Milliseconds(100));
    reset ? gone->CloseWithReset() : gone->Close();
  }
  ASSERT_NO_FATAL_FAILURE(FinishHolders());
  absl::SleepFor(absl::Milliseconds(100));
  std::vector<std::unique_ptr<HttpConnection>> conns;
  for (int i = 0; i < 3; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(c->Send(StreamGenerate(p_, kTokens, kDelayMs)));
    conns.push_back(std::move(c));
  }
  int at_once = 0;
  for (auto& c : conns) {
    auto r = c->ReadResponse(absl::Seconds(10));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200);
    at_once += r->Header("X-Queue-Wait-Ms").value_or("") == "0";
  }
  EXPECT_EQ(at_once, 2);
  EXPECT_EQ(SimRequests(), 5);  // the holders and the 3: no embed completed
  ModelStats m = Model();
  EXPECT_EQ(m.max_running, 2) << m.text;
  EXPECT_EQ(m.queued, 0) << m.text;
}

// A client that goes away in the middle of its running generation (an
// HTTP/1.1 close, an HTTP/2 RST_STREAM, an HTTP/2 connection close) gives
// its slot back at once: the next waiter starts within a few milliseconds,
// not when the generation would have ended.
TEST_F(FairQueueLoad, RunningGenerationCancelledFreesItsSlotAtOnce) {
  const std::string a = AddKey("a");
  const std::string w = AddKey("w");
  ASSERT_NO_FATAL_FAILURE(Start());
  // Three long generations of key a: two run (an HTTP/1.1 one and an h2
  // stream), and once they go, the third (another connection) runs too.
  IT_ASSERT_OK_AND_ASSIGN(auto h1, HttpConnection::Connect(proxy_port()));
  IT_ASSERT_OK(h1->Send(StreamGenerate(a, 40, 100)));
  IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, h1->ReadHead(absl::Seconds(5)));
  ASSERT_EQ(head.status, 200);
  IT_ASSERT_OK_AND_ASSIGN(auto h2a, H2Client::Open(proxy_port()));
  IT_ASSERT_OK(h2a->Generate(1, a, 40, 100));
  ASSERT_TRUE(h2a->AwaitHead(1, absl::Seconds(5)));
  ASSERT_EQ(h2a->stream(1).status, 200);
  // Three waiters of key w, one per cancel.
  IT_ASSERT_OK_AND_ASSIGN(auto waiters, H2Client::Open(proxy_port()));
  for (uint32_t id : {1u, 3u, 5u}) IT_ASSERT_OK(waiters->Generate(id, w, 40, 100));
  waiters->ReadFor(absl::Milliseconds(200));
  ASSERT_EQ(waiters->stream(1).status, 0);
  // Far less than the 3.5 s left of the cancelled generation.
  const absl::Duration prompt = absl::Milliseconds(300) * TimingSlack();
  // 1: the HTTP/1.1 client closes.
  absl::Time gone = absl::Now();
  h1->Close();
  ASSERT_TRUE(waiters->AwaitHead(1, absl::Seconds(5)));
  EXPECT_EQ(waiters->stream(1).status, 200);
  EXPECT_LT(waiters->stream(1).head - gone, prompt);
  // 2: the h2 stream is reset.
  gone = absl::Now();
  IT_ASSERT_OK(h2a->Send(h2::RstStreamFrame(1, h2::kCancel)));
  ASSERT_TRUE(waiters->AwaitHead(3, absl::Seconds(5)));
  EXPECT_EQ(waiters->stream(3).status, 200);
  EXPECT_LT(waiters->stream(3).head - gone, prompt);
  // 3: the connection of a running stream (waiters' own 1) closes: 5 runs.
  IT_ASSERT_OK_AND_ASSIGN(auto last, H2Client::Open(proxy_port()));
  IT_ASSERT_OK(last->Generate(1, w, 1, 1));
  last->ReadFor(absl::Milliseconds(100));
  ASSERT_EQ(last->stream(1).status, 0);
  gone = absl::Now();
  h2a->Close();  // nothing of its own runs now; the waiters' streams hold both slots
  IT_ASSERT_OK(waiters->Send(h2::RstStreamFrame(1, h2::kCancel)));
  ASSERT_TRUE(waiters->AwaitHead(5, absl::Seconds(5)));
  EXPECT_EQ(waiters->stream(5).status, 200);
  EXPECT_LT(waiters->stream(5).head - gone, prompt);
  gone = absl::Now();
  waiters->Close();  // 3 and 5 run on it
  ASSERT_TRUE(last->AwaitEnd({1}, absl::Seconds(5)));
  EXPECT_EQ(last->stream(1).status, 200);
  EXPECT_LT(last->stream(1).head - gone, prompt);
  absl::SleepFor(absl::Milliseconds(100));
  absl::StatusOr<SimStats> s = FetchSimStats(sim_port());
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->aborted_streams, 5);  // h1, h2a's 1, waiters' 1, 3 and 5
  EXPECT_EQ(s->requests, 6);
  ModelStats m = Model();
  EXPECT_EQ(m.running, 0) << m.text;
  EXPECT_EQ(m.max_running, 2) << m.text;
  EXPECT_EQ(m.queued, 0) << m.text;  // each link was shut before its slot moved on
}

// Many cancels, waiting and running, HTTP/1.1 and HTTP/2, from clients on
// both workers: afterwards sluice still admits exactly 2 at once (a slot
// released twice would admit 3, one never released 1) and nothing is left
// waiting; the cancelled waiters never reached the simulator.
TEST_F(FairQueueLoad, ManyCancelsLeaveExactlyTwoSlots) {
  std::vector<std::string> keys;
  for (const char* name : {"a", "b", "c", "d", "e"}) keys.push_back(AddKey(name));
  ASSERT_NO_FATAL_FAILURE(Start({"--threads=2", "--log_level=debug"}));
  const std::vector<std::string> w0 = AddressesOnWorker(0, 2), w1 = AddressesOnWorker(1, 2);
  ASSERT_EQ(w0.size() + w1.size(), 4u);
  constexpr int kRounds = 3;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    // Running: an HTTP/1.1 generation on worker 0, an h2 one on worker 1.
    IT_ASSERT_OK_AND_ASSIGN(auto run1, HttpConnection::ConnectFrom(proxy_port(), w0[0]));
    IT_ASSERT_OK(run1->Send(StreamGenerate(keys[0], 40, 50)));
    IT_ASSERT_OK_AND_ASSIGN(HttpResponse head, run1->ReadHead(absl::Seconds(5)));
    ASSERT_EQ(head.status, 200);
    IT_ASSERT_OK_AND_ASSIGN(auto run2, H2Client::Open(proxy_port(), w1[0]));
    IT_ASSERT_OK(run2->Generate(1, keys[1], 40, 50));
    ASSERT_TRUE(run2->AwaitHead(1, absl::Seconds(5)));
    ASSERT_EQ(run2->stream(1).status, 200);
    // Waiting: HTTP/1.1 on both workers, h2 streams on both.
    IT_ASSERT_OK_AND_ASSIGN(auto wait1, HttpConnection::ConnectFrom(proxy_port(), w1[1]));
    IT_ASSERT_OK(wait1->Send(StreamGenerate(keys[2], 5, 10)));
    IT_ASSERT_OK_AND_ASSIGN(auto wait2, HttpConnection::ConnectFrom(proxy_port(), w0[1]));
    IT_ASSERT_OK(wait2->Send(StreamGenerate(keys[2], 5, 10)));
    IT_ASSERT_OK_AND_ASSIGN(auto wait3, H2Client::Open(proxy_port(), w0[1]));
    IT_ASSERT_OK(wait3->Generate(1, keys[3], 5, 10));
    IT_ASSERT_OK(wait3->Generate(3, keys[3], 40, 50));
    IT_ASSERT_OK_AND_ASSIGN(auto wait4, H2Client::Open(proxy_port(), w1[1]));
    IT_ASSERT_OK(wait4->Generate(1, keys[4], 5, 10));
    IT_ASSERT_OK(wait4->Generate(3, keys[4], 5, 10));
    wait3->ReadFor(absl::Milliseconds(150));
    // The waiters go: close, reset, RST_STREAM, connection close.
    wait1->Close();
    wait2->CloseWithReset();
    IT_ASSERT_OK(wait3->Send(h2::RstStreamFrame(1, h2::kCancel)));
    wait4->Close();
    absl::SleepFor(absl::Milliseconds(50));
    // The running ones go: the HTTP/1.1 client closes, and wait3's stream
    // 3, the only waiter left, takes the slot; then it is reset running,
    // and run2's connection closes.
    run1->Close();
    ASSERT_TRUE(wait3->AwaitHead(3, absl::Seconds(5)));
    EXPECT_EQ(wait3->stream(3).status, 200);
    IT_ASSERT_OK(wait3->Send(h2::RstStreamFrame(3, h2::kCancel)));
    run2->Close();
    absl::SleepFor(absl::Milliseconds(50));
  }
  absl::SleepFor(absl::Milliseconds(200));
  ModelStats m = Model();
  EXPECT_EQ(m.requests, 3 * kRounds) << m.text;  // run1, run2, wait3's 3: no waiter
  EXPECT_EQ(m.running, 0) << m.text;             // every cancelled generation stopped
  EXPECT_EQ(m.waiting, 0) << m.text;
  EXPECT_EQ(m.max_running, 2) << m.text;
  // A cancelled generation's upstream link is shut down before its slot
  // goes to the next waiter, so the simulator never had 3 at once.
  EXPECT_EQ(m.queued, 0) << m.text;
  IT_ASSERT_OK(ResetSim(sim_port()));
  // Six at once from three keys on both workers: 2 start at once, the
  // others wait; the simulator runs 2 at a time and queues none.
  std::vector<std::unique_ptr<HttpConnection>> conns;
  for (int i = 0; i < 6; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto c,
                            HttpConnection::ConnectFrom(proxy_port(), (i % 2 ? w1 : w0)[i / 3]));
    IT_ASSERT_OK(c->Send(StreamGenerate(keys[i % 3], kTokens, kDelayMs)));
    conns.push_back(std::move(c));
  }
  int at_once = 0;
  for (auto& c : conns) {
    auto r = c->ReadResponse(absl::Seconds(20));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200);
    EXPECT_TRUE(absl::StrContains(r->body, "\"done\":true"));
    at_once += r->Header("X-Queue-Wait-Ms").value_or("") == "0";
  }
  EXPECT_EQ(at_once, 2);
  m = Model();
  EXPECT_EQ(m.requests, 6) << m.text;
  EXPECT_EQ(m.max_running, 2) << m.text;
  EXPECT_EQ(m.queued, 0) << m.text;
  ExpectBothWorkers({w0[0], w0[1], w1[0], w1[1]});
}

// --queue_timeout over HTTP/2: the stream that waited too long gets 503
// with Retry-After and a JSON error; the connection and its other streams
// carry on (a route that is never queued, a generation that then waits and
// runs).
TEST_F(FairQueueLoad, H2QueueTimeoutAnswersThatStreamOnly) {
  const std::string a = AddKey("a");
  const std::string b = AddKey("b");
  ASSERT_NO_FATAL_FAILURE(Start({"--queue_timeout=1s"}));
  std::vector<std::unique_ptr<HttpConnection>> holders;
  for (int i = 0; i < 2; ++i) {
    IT_ASSERT_OK_AND_ASSIGN(auto h, HttpConnection::Connect(proxy_port()));
    IT_ASSERT_OK(h->Send(StreamGenerate(a, 15, 100)));  // 1.5 s
    holders.push_back(std::move(h));
  }
  absl::SleepFor(absl::Milliseconds(100));
  IT_ASSERT_OK_AND_ASSIGN(auto c, H2Client::Open(proxy_port()));
  const absl::Time start = absl::Now();
  IT_ASSERT_OK(c->Generate(1, b, 1, 1));
  ASSERT_TRUE(c->AwaitEnd({1}, absl::Seconds(5)));
  const H2Stream& timed_out = c->stream(1);
  EXPECT_EQ(timed_out.status, 503) << timed_out.body;
  EXPECT_GE(timed_out.end - start, absl::Milliseconds(900));
  EXPECT_TRUE(timed_out.ended) << "reset instead of an answer";
  EXPECT_TRUE(timed_out.Header("retry-after").has_value());
  EXPECT_TRUE(JsonError(timed_out.body).has_value()) << timed_out.body;
  // The same connection: a listing at once, and a generation that waits
  // for a holder (~400 ms, within its own 1 s) and runs.
  IT_ASSERT_OK(c->Request(3, "GET", "/api/tags", {{"authorization", "Bearer " + b}}));
  IT_ASSERT_OK(c->Generate(5, b, 2, 20));
  ASSERT_TRUE(c->AwaitEnd({3, 5}, absl::Seconds(10)));
  EXPECT_EQ(c->stream(3).status, 200);
  EXPECT_EQ(c->stream(5).status, 200) << c->stream(5).body;
  EXPECT_TRUE(c->stream(5).ToOutcome().complete);
  EXPECT_GT(c->stream(5).ToOutcome().wait_ms, 100);
  EXPECT_FALSE(c->goaway());
  EXPECT_FALSE(c->closed());
  for (auto& h : holders) {
    auto r = h->ReadResponse(absl::Seconds(10));
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(SimRequests(), 4);  // the holders, the listing and stream 5
}

}  // namespace
}  // namespace sluice::integration
