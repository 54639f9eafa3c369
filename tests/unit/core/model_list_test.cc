#include "core/proxy/model_list.h"

#include <string>

#include "gtest/gtest.h"

namespace sluice::core {
namespace {

TEST(ModelListMergerTest, UnionOfTagsDeduplicatedByNameFirstWins) {
  ModelListMerger m(ModelList::kTags);
  ASSERT_TRUE(m.Add(R"({"models":[{"name":"a:latest","size":1,"details":{"family":"llama"}},)"
                    R"( {"name":"b:latest","size":2} ]})")
                  .ok());
  ASSERT_TRUE(m.Add(R"({"models":[{"name":"b:latest","size":99},{"name":"c:7b","size":3}]})").ok());
  EXPECT_EQ(m.size(), 3u);
  EXPECT_EQ(m.Finish(), R"({"models":[{"name":"a:latest","size":1,"details":{"family":"llama"}},)"
                        R"({"name":"b:latest","size":2},{"name":"c:7b","size":3}]})");
}

TEST(ModelListMergerTest, EntriesAreCopiedVerbatim) {
  // Number spelling, escapes, key order and unknown fields as the backend
  // wrote them.
  const std::string entry =
      R"({"size":1.50e3,"name":"caf\u00e9:latest","modified_at":"2026-01-01T00:00:00Z",)"
      R"("x":{"nested":[1,2,{"y":null}]},"flag":true})";
  ModelListMerger m(ModelList::kTags);
  ASSERT_TRUE(m.Add("{ \"models\" : [ " + entry + " ] }").ok());
  EXPECT_EQ(m.Finish(), "{\"models\":[" + entry + "]}");
}

TEST(ModelListMergerTest, OpenAiListDeduplicatedById) {
  ModelListMerger m(ModelList::kOpenAi);
  ASSERT_TRUE(
      m.Add(R"({"object":"list","data":[{"id":"a","object":"model","created":1,"owned_by":"x"}]})")
          .ok());
  ASSERT_TRUE(m.Add(R"({"object":"list","data":[{"id":"a","object":"model","created":2},)"
                    R"({"id":"b","object":"model","created":3}]})")
                  .ok());
  EXPECT_EQ(m.Finish(),
            R"({"object":"list","data":[{"id":"a","object":"model","created":1,"owned_by":"x"},)"
            R"({"id":"b","object":"model","created":3}]})");
}

TEST(ModelListMergerTest, LoadedModelsListedOnceByName) {
  ModelListMerger m(ModelList::kPs);
  ASSERT_TRUE(m.Add(R"({"models":[{"name":"a","model":"a","size_vram":5}]})").ok());
  ASSERT_TRUE(m.Add(R"({"models":[{"name":"a","model":"a","size_vram":6}]})").ok());
  EXPECT_EQ(m.Finish(), R"({"models":[{"name":"a","model":"a","size_vram":5}]})");
}

TEST(ModelListMergerTest, EmptyListsAndNothingAdded) {
  EXPECT_EQ(ModelListMerger(ModelList::kTags).Finish(), R"({"models":[]})");
  EXPECT_EQ(ModelListMerger(ModelList::kOpenAi).Finish(), R"({"object":"list","data":[]})");
  ModelListMerger m(ModelList::kPs);
  ASSERT_TRUE(m.Add(R"({"models":[]})").ok());
  ASSERT_TRUE(m.Add(R"({"models":[{"name":"x"}]})").ok());
  ASSERT_TRUE(m.Add(R"({"models":[]})").ok());
  EXPECT_EQ(m.Finish(), R"({"models":[{"name":"x"}]})");
  // Ollama's /v1/models without models: "data":null (a Go nil slice).
  ModelListMerger o(ModelList::kOpenAi);
  ASSERT_TRUE(o.Add(R"({"object":"list","data":null})").ok());
  ASSERT_TRUE(o.Add(R"({"object":"list","data":[{"id":"y"}]})").ok());
  EXPECT_EQ(o.Finish(), R"({"object":"list","data":[{"id":"y"}]})");
}

TEST(ModelListMergerTest, MalformedAnswersAddNothing) {
  ModelListMerger m(ModelList::kTags);
  ASSERT_TRUE(m.Add(R"({"models":[{"name":"keep"}]})").ok());
  for (const char* bad : {
           "",
           "<html>busy</html>",
           R"({"error":"server busy"})",
           R"({"models":{"name":"a"}})",
           R"({"models":["a"]})",
           R"({"models":[{"name":"a"},{"size":1}]})",  // the good entry is not kept either
           R"({"models":[{"name":1}]})",
           R"({"models":[{"name":"a"})",            // cut short
           R"({"models":[{"name":"a","x":tru}]})",  // invalid inside an entry
           R"({"models":[{"name":"a"}]} trailing)",
       }) {
    EXPECT_FALSE(m.Add(bad).ok()) << bad;
  }
  EXPECT_EQ(m.Finish(), R"({"models":[{"name":"keep"}]})");
  // The /v1/models answer has its list under "data".
  ModelListMerger o(ModelList::kOpenAi);
  EXPECT_FALSE(o.Add(R"({"models":[{"name":"a"}]})").ok());
  EXPECT_FALSE(o.Add(R"({"object":"list","data":[{"name":"a"}]})").ok());
}

}  // namespace
}  // namespace sluice::core
