#include "config/yaml_guard.hpp"

namespace tcpfault::config {

std::optional<YAML::Mark> flow_too_deep(std::string_view t) {
    int depth = 0;
    int line = 0;
    int col = 0;
    char quote = 0;
    bool comment = false;
    // A quote opens a quoted scalar only where a scalar can start (not inside `don't`).
    auto scalar_start = [&](size_t i) {
        if (i == 0) return true;
        char p = t[i - 1];
        return p == ' ' || p == '\t' || p == '\n' || p == '[' || p == '{' || p == ',' || p == ':';
    };
    for (size_t i = 0; i < t.size(); ++i) {
        char c = t[i];
        if (c == '\n') {
            ++line;
            col = 0;
            comment = false;
            continue;
        }
        if (comment) {
            ++col;
            continue;
        }
        if (quote != 0) {
            if (quote == '"' && c == '\\' && i + 1 < t.size() && t[i + 1] != '\n') {
                ++i;
                col += 2;
                continue;
            }
            if (c == quote) quote = 0;
            ++col;
            continue;
        }
        if (c == '#' && (i == 0 || t[i - 1] == ' ' || t[i - 1] == '\t')) {
            comment = true;
        } else if ((c == '"' || c == '\'') && scalar_start(i)) {
            quote = c;
        } else if (c == '[' || c == '{') {
            if (++depth > kMaxFlowDepth) {
                YAML::Mark m;
                m.pos = static_cast<int>(i);
                m.line = line;
                m.column = col;
                return m;
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
        ++col;
    }
    return std::nullopt;
}

std::optional<ManyDocuments> too_many_documents(std::string_view t) {
    ManyDocuments m;
    int line = 0;
    for (size_t i = 0; i < t.size();) {
        size_t end = t.find('\n', i);
        if (end == std::string_view::npos) end = t.size();
        std::string_view l = t.substr(i, end - i);
        if (l.starts_with("---") &&
            (l.size() == 3 || l[3] == ' ' || l[3] == '\t' || l[3] == '\r')) {
            if (++m.markers == 2) {
                m.second.pos = static_cast<int>(i);
                m.second.line = line;
                m.second.column = 0;
            }
        }
        ++line;
        i = end + 1;
    }
    if (m.markers <= kMaxDocumentMarkers) return std::nullopt;
    return m;
}

}  // namespace tcpfault::config
