#include "core/upstream/model_router.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sluice::core {
namespace {

using Kind = RouteChoice::Kind;
using Has = ModelTable::View::Has;

TEST(ClassifyRouteTest, ModelAdminAndOther) {
  EXPECT_EQ(ClassifyRoute("POST", "/api/chat"), RouteClass::kModel);
  EXPECT_EQ(ClassifyRoute("POST", "/api/generate"), RouteClass::kModel);
  EXPECT_EQ(ClassifyRoute("POST", "/api/embed"), RouteClass::kModel);
  EXPECT_EQ(ClassifyRoute("POST", "/api/embeddings"), RouteClass::kModel);
  EXPECT_EQ(ClassifyRoute("POST", "/api/show"), RouteClass::kModel);
  EXPECT_EQ(ClassifyRoute("POST", "/v1/chat/completions"), RouteClass::kModel);
  EXPECT_EQ(ClassifyRoute("POST", "/v1/completions?x=1"), RouteClass::kModel);
  EXPECT_EQ(ClassifyRoute("POST", "/v1/embeddings"), RouteClass::kModel);
  EXPECT_EQ(ClassifyRoute("GET", "/api/chat"), RouteClass::kAny);
  EXPECT_EQ(ClassifyRoute("POST", "/api/chatter"), RouteClass::kAny);
  EXPECT_EQ(ClassifyRoute("GET", "/api/tags"), RouteClass::kAny);
  EXPECT_EQ(ClassifyRoute("POST", "/api/pull"), RouteClass::kAdmin);
  EXPECT_EQ(ClassifyRoute("DELETE", "/api/delete"), RouteClass::kAdmin);
  EXPECT_EQ(ClassifyRoute("POST", "/api/create"), RouteClass::kAdmin);
  EXPECT_EQ(ClassifyRoute("POST", "/api/copy"), RouteClass::kAdmin);
  EXPECT_EQ(ClassifyRoute("POST", "/api/push"), RouteClass::kAdmin);
  EXPECT_EQ(ClassifyRoute("HEAD", "/api/blobs/sha256:abc"), RouteClass::kAdmin);
}

TEST(CanonicalModelTest, AddsLatestAndLowersCase) {
  EXPECT_EQ(CanonicalModel("llama3"), "llama3:latest");
  EXPECT_EQ(CanonicalModel("Llama3:8B"), "llama3:8b");
  EXPECT_EQ(CanonicalModel("hf.co/org/repo:Q4_K_M"), "hf.co/org/repo:q4_k_m");
  // A port in a registry host is not a tag.
  EXPECT_EQ(CanonicalModel("registry:5000/lib/m"), "registry:5000/lib/m:latest");
}

RouteCandidate Loaded(int in_flight, int slots = 1, int total = -1) {
  RouteCandidate c;
  c.usable = true;
  c.slots = slots;
  c.view.has = Has::kYes;
  c.view.loaded = true;
  c.view.in_flight = in_flight;
  c.view.total_in_flight = total < 0 ? in_flight : total;
  c.view.loaded_count = 1;
  return c;
}

RouteCandidate Cold(int loaded_count, int idle_loaded, int total = 0) {
  RouteCandidate c;
  c.usable = true;
  c.view.has = Has::kYes;
  c.view.loaded_count = loaded_count;
  c.view.idle_loaded = idle_loaded;
  c.view.total_in_flight = total;
  return c;
}

TEST(ChooseBackendTest, LoadedWithAFreeSlotWins) {
  // B is loaded with a free slot; A is idle but would have to load.
  std::vector<RouteCandidate> c = {Cold(0, 0), Loaded(1, 2)};
  RouteChoice r = ChooseBackend(c);
  EXPECT_EQ(r.kind, Kind::kLoaded);
  EXPECT_EQ(r.index, 1);
}

TEST(ChooseBackendTest, MostFreeSlotsAmongLoaded) {
  std::vector<RouteCandidate> c = {Loaded(3, 4), Loaded(1, 4)};
  EXPECT_EQ(ChooseBackend(c).index, 1);
}

TEST(ChooseBackendTest, BusyLoadedQueuesWhenLoadingIsSlower) {
  // One generation ahead (1 s each), a load takes 10 s: wait.
  RouteCandidate busy = Loaded(1);
  busy.view.gen_ns = 1'000'000'000;
  RouteCandidate idle = Cold(0, 0);
  idle.view.load_ns = 10'000'000'000;
  RouteChoice r = ChooseBackend({busy, idle});
  EXPECT_EQ(r.kind, Kind::kQueued);
  EXPECT_EQ(r.index, 0);
}

TEST(ChooseBackendTest, SpillsWhenTheWaitIsLongerThanALoad) {
  // Eight generations ahead of 1 s each; a load takes 2 s.
  RouteCandidate busy = Loaded(8);
  busy.view.gen_ns = 1'000'000'000;
  RouteCandidate idle = Cold(1, 1);  // its loaded model is idle: evictable
  idle.view.load_ns = 2'000'000'000;
  RouteChoice r = ChooseBackend({busy, idle});
  EXPECT_EQ(r.kind, Kind::kSpill);
  EXPECT_EQ(r.index, 1);
}

TEST(ChooseBackendTest, NeverSpillsOntoAModelInUse) {
  RouteCandidate busy = Loaded(8);
  busy.view.gen_ns = 1'000'000'000;
  RouteCandidate other = Cold(1, 0, 3);  // its one loaded model is in use
  other.view.load_ns = 1'000'000;
  RouteChoice r = ChooseBackend({busy, other});
  EXPECT_EQ(r.kind, Kind::kQueued);
  EXPECT_EQ(r.index, 0);
  // Unless its capacity is known to leave room.
  other.max_loaded = 2;
  r = ChooseBackend({busy, other});
  EXPECT_EQ(r.kind, Kind::kSpill);
  EXPECT_EQ(r.index, 1);
}

TEST(ChooseBackendTest, ColdPrefersABackendWithRoom) {
  std::vector<RouteCandidate> c = {Cold(1, 0, 2), Cold(1, 1, 0), Cold(0, 0, 5)};
  RouteChoice r = ChooseBackend(c);
  EXPECT_EQ(r.kind, Kind::kCold);
  // 1 and 2 load it without evicting a model in use; 2 evicts nothing.
  EXPECT_EQ(r.index, 2);
  // Between two that evict an idle model: the quicker load, then the
  // least busy.
  c = {Cold(1, 1, 3), Cold(1, 1, 1)};
  EXPECT_EQ(ChooseBackend(c).index, 1);
  c[0].view.load_ns = 1'000'000;
  EXPECT_EQ(ChooseBackend(c).index, 0);
}

TEST(ChooseBackendTest, ColdEverywhereBusyTakesTheLeastBusy) {
  std::vector<RouteCandidate> c = {Cold(1, 0, 4), Cold(1, 0, 2)};
  RouteChoice r = ChooseBackend(c);
  EXPECT_EQ(r.kind, Kind::kCold);
  EXPECT_EQ(r.index, 1);
}

// Every backend busy with another model: the load goes where the model it
// displaces is in least demand, so a popular model keeps its place even on
// the busier backend.
TEST(ChooseBackendTest, ColdEverywhereBusyDisplacesTheLeastDemandedModel) {
  RouteCandidate popular = Cold(1, 0, 4);
  popular.view.least_demand_other = 40;
  RouteCandidate rare = Cold(1, 0, 5);
  rare.view.least_demand_other = 3;
  RouteChoice r = ChooseBackend({popular, rare});
  EXPECT_EQ(r.kind, Kind::kCold);
  EXPECT_EQ(r.index, 1);
}

TEST(ChooseBackendTest, NotFoundAndNone) {
  RouteCandidate lacks = Cold(0, 0);
  lacks.view.has = Has::kNo;
  EXPECT_EQ(ChooseBackend({lacks, lacks}).kind, Kind::kNotFound);
  // The one that has it is down: 503, not 404.
  RouteCandidate down = Loaded(0);
  down.usable = false;
  EXPECT_EQ(ChooseBackend({lacks, down}).kind, Kind::kNone);
  // Unknown lists (no check yet) serve every model.
  RouteCandidate unknown = Cold(0, 0);
  unknown.view.has = Has::kUnknown;
  RouteChoice r = ChooseBackend({lacks, unknown});
  EXPECT_EQ(r.kind, Kind::kCold);
  EXPECT_EQ(r.index, 1);
}

TEST(ChooseBackendTest, SkipsUnusableAndBackendsWithoutTheModel) {
  RouteCandidate down = Loaded(0);
  down.usable = false;
  RouteCandidate lacks = Loaded(0);
  lacks.view.has = Has::kNo;
  RouteCandidate ok = Loaded(5, 1);
  RouteChoice r = ChooseBackend({down, lacks, ok});
  EXPECT_EQ(r.kind, Kind::kQueued);
  EXPECT_EQ(r.index, 2);
}

TEST(ModelTableTest, BeginMarksLoadedAndCountsInFlight) {
  ModelTable t;
  t.Begin("a:latest", 100);
  t.Begin("a:latest", 101);
  ModelTable::View v = t.Look("a:latest");
  EXPECT_TRUE(v.loaded);
  EXPECT_EQ(v.in_flight, 2);
  EXPECT_EQ(v.total_in_flight, 2);
  EXPECT_EQ(v.has, Has::kUnknown);
  t.End("a:latest", 200, true, 200, 50, 0);
  t.End("a:latest", 300, true, 200, 150, 0);
  v = t.Look("a:latest");
  EXPECT_EQ(v.in_flight, 0);
  EXPECT_GT(v.gen_ns, 0);
  EXPECT_TRUE(v.loaded);
  EXPECT_EQ(t.Look("b:latest").idle_loaded, 1);
}

TEST(ModelTableTest, MaxLoadedEvictsTheLeastRecentlyUsedIdleModel) {
  ModelTable t(/*max_loaded=*/1);
  t.Begin("a:latest", 100);
  t.End("a:latest", 110, true, 200, 10, 0);
  t.Begin("b:latest", 200);
  EXPECT_FALSE(t.Look("a:latest").loaded);
  EXPECT_TRUE(t.Look("b:latest").loaded);
  // b is in use: c waits for it to end, and b is on its way out.
  t.Begin("c:latest", 300);
  EXPECT_FALSE(t.Look("b:latest").loaded);
  EXPECT_EQ(t.Look("b:latest").in_flight, 1);
  EXPECT_TRUE(t.Look("c:latest").loaded);
}

// Every loaded model in use and no room: the least recently used one is
// unloaded once its generations end, and no longer offered as loaded (a
// request for it would wait for the other model's load, then reload it).
TEST(ModelTableTest, ABusyModelThatMustMakeRoomIsNotOfferedAsLoaded) {
  ModelTable t(/*max_loaded=*/1);
  t.Begin("a:latest", 100);  // a runs
  t.Begin("b:latest", 200);  // b waits for a's place
  EXPECT_FALSE(t.Look("a:latest").loaded);
  EXPECT_EQ(t.Look("a:latest").in_flight, 1);
  EXPECT_TRUE(t.Look("b:latest").loaded);
  EXPECT_DOUBLE_EQ(t.Look("c:latest").least_demand_other, 1) << "b, a is on its way out";
  EXPECT_EQ(t.LoadedModels(), std::vector<std::string>{"b:latest"});
  // The /api/ps answer still lists a while it runs: it stays on its way out.
  t.SetLoaded({"a:latest"}, 250);
  EXPECT_FALSE(t.Look("a:latest").loaded);
  t.End("a:latest", 300, true, 200, 100, 0);
  EXPECT_FALSE(t.Look("a:latest").loaded);
  EXPECT_EQ(t.Look("b:latest").loaded_count, 1);
}

TEST(ModelTableTest, PsAnswerKeepsWhatIsInFlightOrNewer) {
  ModelTable t;
  t.Begin("a:latest", 100);  // in flight
  t.Begin("b:latest", 100);
  t.End("b:latest", 150, true, 200, 50, 0);  // idle, sent at 100
  t.Begin("c:latest", 500);
  t.End("c:latest", 600, true, 200, 50, 0);  // idle, used after the question
  t.SetLoaded({"d"}, /*asked_ns=*/400);
  EXPECT_TRUE(t.Look("a:latest").loaded);
  EXPECT_FALSE(t.Look("b:latest").loaded);
  EXPECT_TRUE(t.Look("c:latest").loaded);
  EXPECT_TRUE(t.Look("d:latest").loaded);
}

// Demand counts the generations sent lately and halves every 30 s; an idle
// but popular model is not the one a load displaces.
TEST(ModelTableTest, DemandDecaysAndGuidesWhatALoadDisplaces) {
  ModelTable t;
  for (int i = 0; i < 8; ++i) t.Begin("a:latest", 1'000'000'000);
  for (int i = 0; i < 8; ++i) t.End("a:latest", 2'000'000'000, true, 200, 1, 0);
  EXPECT_DOUBLE_EQ(t.Look("c:latest", 1'000'000'000).least_demand_other, 8);
  EXPECT_NEAR(t.Look("c:latest", 31'000'000'000).least_demand_other, 4, 1e-9);
  // Two backends, each with an idle model: the one with less demand goes.
  RouteCandidate busy_model = Cold(1, 1);
  busy_model.view.least_demand_other = 8;
  RouteCandidate quiet_model = Cold(1, 1, 3);
  quiet_model.view.least_demand_other = 0.5;
  RouteChoice r = ChooseBackend({busy_model, quiet_model});
  EXPECT_EQ(r.kind, Kind::kCold);
  EXPECT_EQ(r.index, 1);
}

TEST(ModelTableTest, TagsAndA404) {
  ModelTable t;
  t.SetAvailable({"a:latest", "B"});
  EXPECT_EQ(t.Look("a:latest").has, Has::kYes);
  EXPECT_EQ(t.Look("b:latest").has, Has::kYes);
  EXPECT_EQ(t.Look("c:latest").has, Has::kNo);
  t.Begin("a:latest", 1);
  t.End("a:latest", 2, false, 404, 0, 0);
  EXPECT_EQ(t.Look("a:latest").has, Has::kNo);
  EXPECT_FALSE(t.Look("a:latest").loaded);
}

}  // namespace
}  // namespace sluice::core
