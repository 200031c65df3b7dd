// A check run before yaml-cpp sees untrusted text. yaml-cpp tokenizes a whole flow collection
// before its own depth guard trips, at ~235 bytes per unclosed bracket: one 1 MiB body of '['
// costs ~240 MiB. Absurd flow nesting is refused up front instead.
#pragma once

#include <yaml-cpp/yaml.h>

#include <optional>
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

}  // namespace tcpfault::config
