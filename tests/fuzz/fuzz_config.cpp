// fuzz_config: whole config files (load_string) and single rule bodies (parse_rule, what the
// admin API feeds request bodies to) on arbitrary text.
// Invariants beyond "no crash / no sanitizer report / no hang":
//  - a result has a config (a rule) exactly when it has no errors;
//  - every diagnostic has a non-empty message; a positioned one points inside the text
//    (line <= number of lines + 1);
//  - a loaded config's proxies have names, listen/upstream ports and unique names; rules with
//    `when.line` carry a compiled regex.
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/parser.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>

#include "config/config.hpp"
#include "config/env_expand.hpp"
#include "fuzz_common.hpp"

using namespace tcpfault::config;

namespace {

// A fixed environment, so `${VAR}` expansion is exercised deterministically.
std::optional<std::string> fake_env(const std::string& name) {
    if (name == "PORT") return std::string("8080");
    if (name == "HOST") return std::string("127.0.0.1");
    if (name == "EMPTY") return std::string();
    if (name == "YAML") return std::string("{type: reset}");
    return std::nullopt;
}

// Known bug, reported (see RELIABILITY.md): YAML::LoadAll in yaml-cpp 0.7 (Debian 12) never
// returns on a stream with a stray top-level token such as "," (jbeder/yaml-cpp#1040, fixed
// upstream by #1319 after 0.8.0): every HandleNextDocument() yields another null document and
// memory grows without bound. config/parse.cpp calls LoadAll on every file and every admin
// API rule body. Until the loader guards against it, inputs that make yaml-cpp produce more
// than kMaxDocs documents are skipped here so the fuzzer can look for other bugs; run with
// FUZZ_CONFIG_SKIP_LOADALL_HANG=0 to fuzz them too (the harness then hangs on such an input).
struct CountDocs : YAML::EventHandler {
    void OnDocumentStart(const YAML::Mark&) override {}
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  const std::string&) override {}
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {}
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                    YAML::EmitterStyle::value) override {}
    void OnMapEnd() override {}
};

bool g_skip_loadall_hang = true;

bool loadall_would_hang(const std::string& text) {
    constexpr int kMaxDocs = 64;
    std::istringstream in(text);
    YAML::Parser parser(in);
    CountDocs handler;
    try {
        for (int docs = 0; docs < kMaxDocs; ++docs)
            if (!parser.HandleNextDocument(handler)) return false;
    } catch (const YAML::Exception&) {
        return false;
    }
    return true;
}

void check_diagnostics(const std::vector<Diagnostic>& errors, const std::string& text) {
    size_t lines = 1;
    for (char c : text) lines += c == '\n';
    for (const auto& d : errors) {
        FUZZ_CHECK(!d.message.empty());
        FUZZ_CHECK(d.pos.line >= 0 && d.pos.col >= 0);
        // ${VAR} expansion maps positions back to the original text.
        FUZZ_CHECK(static_cast<size_t>(d.pos.line) <= lines + 1);
        (void)d.str();
    }
}

void check_rule(const Rule& r) {
    FUZZ_CHECK(!r.name.empty());
    if (r.when && r.when->line) FUZZ_CHECK(r.when->line_re != nullptr);
    (void)fault_name(r.fault);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* v = std::getenv("FUZZ_CONFIG_SKIP_LOADALL_HANG");
    g_skip_loadall_hang = v == nullptr || std::string_view(v) != "0";
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 64 * 1024) return 0;
    std::string text(reinterpret_cast<const char*>(data), size);

    if (g_skip_loadall_hang &&
        (loadall_would_hang(text) || loadall_would_hang(expand_env(text, fake_env).text)))
        return 0;

    LoadResult lr = load_string(text, "fuzz.yaml", fake_env);
    FUZZ_CHECK(lr.config.has_value() == lr.errors.empty());
    check_diagnostics(lr.errors, text);
    if (lr.config) {
        std::set<std::string> names;
        for (const auto& p : lr.config->proxies) {
            FUZZ_CHECK(!p.name.empty());
            FUZZ_CHECK(names.insert(p.name).second);
            FUZZ_CHECK(p.upstream.port != 0);
            std::set<std::string> rules;
            for (const auto& r : p.rules) {
                check_rule(r);
                FUZZ_CHECK(rules.insert(r.name).second);
            }
        }
    }

    RuleResult rr = parse_rule(text, "request body");
    FUZZ_CHECK(rr.rule.has_value() == rr.errors.empty());
    check_diagnostics(rr.errors, text);
    if (rr.rule) check_rule(*rr.rule);
    return 0;
}
