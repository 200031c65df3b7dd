#include "config/yaml_guard.hpp"

#include <yaml-cpp/eventhandler.h>

#include <sstream>

namespace tcpfault::config {

namespace {

// Remembers, for one document, where it started, its first node and whether it had a value;
// builds nothing.
struct DocumentShape : YAML::EventHandler {
    YAML::Mark start;
    std::optional<YAML::Mark> first;
    size_t events = 0;
    bool null_only = true;  // every event so far was OnNull

    void node(const YAML::Mark& m, bool null) {
        if (!first) first = m;
        ++events;
        if (!null) null_only = false;
    }
    void OnDocumentStart(const YAML::Mark& m) override {
        start = m;
        first.reset();
        events = 0;
        null_only = true;
    }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& m, YAML::anchor_t) override { node(m, true); }
    void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { node(m, false); }
    void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                  const std::string&) override {
        node(m, false);
    }
    void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {
        node(m, false);
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                    YAML::EmitterStyle::value) override {
        node(m, false);
    }
    void OnMapEnd() override {}

    // Nothing but one null at the document's own start: what a document that consumed no
    // token looks like (a document that does consume one ends before the next one starts).
    bool empty_at_start() const {
        return events == 1 && null_only && first && first->pos == start.pos;
    }
};

}  // namespace

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

DocumentScan scan_documents(const std::string& text) {
    DocumentScan out;
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentShape doc;
    // The previous document (when it consumed no token, the stray token is where it started)
    // and whether the one before that had a value.
    std::optional<YAML::Mark> prev_start;
    bool prev_empty = false;
    bool value_before_prev = false;
    bool prev_value = false;
    // Belt and braces: every real document consumes at least one token, and there are no
    // more tokens than bytes (plus the virtual ones around them), so more documents than
    // this means the parser is stuck in a way not foreseen above.
    const size_t max_documents = 2 * text.size() + 4;
    size_t handled = 0;
    while (parser.HandleNextDocument(doc)) {
        bool stuck =
            prev_start && prev_empty && doc.empty_at_start() && doc.start.pos == prev_start->pos;
        if (stuck || ++handled > max_documents) {
            // The previous document was the first of the endless run, not a real one.
            --out.documents;
            out.stray = doc.start;
            out.stray_after_value = value_before_prev;
            return out;
        }
        if (++out.documents == 2) out.second = doc.first.value_or(doc.start);
        value_before_prev = prev_value;
        prev_start = doc.start;
        prev_empty = doc.empty_at_start();
        prev_value = !doc.null_only;
    }
    return out;
}

}  // namespace tcpfault::config
