// fuzz_config: whole config files (load_string) and single rule bodies (parse_rule, what the
// admin API feeds request bodies to) on arbitrary text.
// Nothing is skipped: streams that yaml-cpp 0.7's LoadAll never returned on (a stray `,`,
// RELIABILITY.md 4.2) are fuzzed like any other input, and a hang is a finding (-timeout).
// Invariants beyond "no crash / no sanitizer report / no hang":
//  - a result has a config (a rule) exactly when it has no errors;
//  - every diagnostic has a non-empty message; a positioned one points inside the text
//    (line <= number of lines + 1);
//  - a loaded config's proxies have names, listen/upstream ports and unique names; rules with
//    `when.line` carry a compiled regex.
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "fuzz_common.hpp"

using namespace tcpfault::config;

namespace {

// A fixed environment, so `${VAR}` expansion is exercised deterministically.
std::optional<std::string> fake_env(const std::string& name) {
    if (name == "PORT") return std::string("8080");
    if (name == "HOST") return std::string("127.0.0.1");
    if (name == "EMPTY") return std::string();
    if (name == "YAML") return std::string("{type: reset}");
    if (name == "COMMA") return std::string(",");
    return std::nullopt;
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

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size > 64 * 1024) return 0;
    std::string text(reinterpret_cast<const char*>(data), size);

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
