// Checks run before yaml-cpp builds nodes from untrusted text. yaml-cpp tokenizes a whole flow
// collection before its own depth guard trips, at ~235 bytes per unclosed bracket: one 1 MiB
// body of '[' costs ~240 MiB. Absurd flow nesting is refused up front instead. And yaml-cpp
// 0.7's LoadAll never returns on some streams (see scan_documents).
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace tcpfault::config {

inline constexpr int kMaxFlowDepth = 256;

// Where the flow nesting ('[' / '{' outside quotes and comments) first exceeds
// kMaxFlowDepth, as a 0-based yaml-cpp mark; nullopt when it never does.
std::optional<YAML::Mark> flow_too_deep(std::string_view text);

// yaml-cpp's LoadAll builds every document before we can count them (4 MB of "---" lines cost
// ~680 MiB). Counts column-0 "---" markers without parsing; when there are more than
// kMaxDocumentMarkers, returns their number and the second marker's position.
inline constexpr size_t kMaxDocumentMarkers = 64;
struct ManyDocuments {
    size_t markers = 0;
    YAML::Mark second;
};
std::optional<ManyDocuments> too_many_documents(std::string_view text);

// yaml-cpp 0.7's YAML::LoadAll never returns on a stream where a document would start with a
// token no node can start with, in practice a stray `,` (`,`, `,a`, `[a],`, `a: 1\n---\n,`):
// SingleDocParser reports a null document without consuming the token, so every
// HandleNextDocument() yields another null document at the same place and LoadAll's vector
// grows until memory runs out (jbeder/yaml-cpp#1040, fixed upstream by #1319 after 0.8.0).
//
// scan_documents drives YAML::Parser over the whole stream with an event handler that builds
// nothing, and stops at the first document that did not move the parser: a document that
// consumes no token starts where the previous one started. Every other document consumes at
// least one token, so this takes at most one HandleNextDocument() per token, in memory
// independent of the number of documents. Throws what yaml-cpp throws (YAML::Exception).
struct DocumentScan {
    size_t documents = 0;  // counted up to the stray token, if any
    YAML::Mark second;     // first node of the second document (when documents >= 2)
    // Where the parser stopped moving, and whether the document before it had a value (so
    // the stray token came after a complete value rather than where a value should start).
    std::optional<YAML::Mark> stray;
    bool stray_after_value = false;
};
DocumentScan scan_documents(const std::string& text);

}  // namespace tcpfault::config
