// Real clients through sluice: the npm `ollama` library (NDJSON /api/chat)
// and the npm `openai` library (SSE /v1/chat/completions), run with node.
// Their dependencies are pinned in node/package-lock.json; a missing
// node_modules is a failure with instructions, never a silent skip.
#include <sys/stat.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/integration/proxy_test_base.h"

namespace sluice::integration {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

class H1ToH1NodeClient : public ProxyTest {
 protected:
  void RunScript(const std::string& script, const std::string& package) {
    const std::string dir = SLUICE_NODE_DIR;
    const std::string node = SLUICE_NODE_BIN;
    ASSERT_FALSE(node.empty() || !Exists(node))
        << "node not found at configure time; install nodejs and re-run "
           "cmake";
    ASSERT_TRUE(Exists(absl::StrCat(dir, "/node_modules/", package, "/package.json")))
        << "npm package '" << package << "' is not installed: run `npm ci` "
        << "in " << dir << " (tests/integration/node)";
    ASSERT_NO_FATAL_FAILURE(StartStack());
    CommandResult res = RunProgram(node, {absl::StrCat(dir, "/", script)}, absl::Seconds(30),
                                   {absl::StrCat("SLUICE_URL=", proxy_url())});
    ASSERT_FALSE(res.timed_out) << script << " timed out\n" << res.err;
    EXPECT_TRUE(res.exit.exited && res.exit.code == 0)
        << script << " failed (code " << res.exit.code << ")\nstdout:\n"
        << res.out << "\nstderr:\n"
        << res.err;
  }
};

TEST_F(H1ToH1NodeClient, OllamaLibraryStreamingChat) { RunScript("ollama_chat.mjs", "ollama"); }

TEST_F(H1ToH1NodeClient, OpenAiLibraryStreamingChatCompletions) {
  RunScript("openai_chat.mjs", "openai");
}

}  // namespace
}  // namespace sluice::integration
