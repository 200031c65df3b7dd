// Environment expansion with an offset map back to the original text.
#include "config/env_expand.hpp"

#include <algorithm>

#include "config/quote.hpp"

namespace tcpfault::config {

namespace {

bool name_start(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}
bool name_char(char c) {
    return name_start(c) || (c >= '0' && c <= '9');
}
bool space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

// A quote only opens a quoted scalar where a scalar can start; `it's` is a plain scalar.
bool scalar_can_start_after(char prev) {
    return space(prev) || prev == ':' || prev == '[' || prev == '{' || prev == ',' || prev == '-' ||
           prev == '?';
}

}  // namespace

size_t EnvExpansion::original_offset(size_t expanded_offset) const {
    if (segments_.empty()) return expanded_offset;
    auto it = std::upper_bound(segments_.begin(), segments_.end(), expanded_offset,
                               [](size_t off, const Segment& s) { return off < s.expanded; });
    if (it == segments_.begin()) return expanded_offset;
    --it;
    if (it->substituted) return it->original;
    return it->original + (expanded_offset - it->expanded);
}

EnvExpansion expand_env(std::string_view in, EnvLookup env) {
    EnvExpansion out;
    out.text.reserve(in.size());
    auto mark = [&](size_t orig, bool substituted) {
        out.segments_.push_back({out.text.size(), orig, substituted});
    };
    mark(0, false);

    // A light YAML lexer: just enough to know whether a `#` starts a comment.
    bool in_single = false, in_double = false, in_comment = false;
    char prev = '\n';
    size_t i = 0;
    while (i < in.size()) {
        char c = in[i];
        if (c == '\n') {
            in_comment = false;
            out.text += c;
            prev = c;
            ++i;
            continue;
        }
        if (in_comment) {
            out.text += c;
            prev = c;
            ++i;
            continue;
        }
        if (in_double) {
            if (c == '\\' && i + 1 < in.size() && in[i + 1] != '\n') {
                out.text += c;
                out.text += in[i + 1];
                prev = in[i + 1];
                i += 2;
                continue;
            }
            if (c == '"') in_double = false;
        } else if (in_single) {
            if (c == '\'') {
                if (i + 1 < in.size() && in[i + 1] == '\'') {
                    out.text += "''";
                    prev = '\'';
                    i += 2;
                    continue;
                }
                in_single = false;
            }
        } else if (c == '#' && space(prev)) {
            in_comment = true;
        } else if (c == '"' && scalar_can_start_after(prev)) {
            in_double = true;
        } else if (c == '\'' && scalar_can_start_after(prev)) {
            in_single = true;
        }

        if (c != '$' || in_comment || i + 1 >= in.size() ||
            (in[i + 1] != '$' && in[i + 1] != '{')) {
            out.text += c;
            prev = c;
            ++i;
            continue;
        }
        if (in[i + 1] == '$') {
            mark(i, true);
            out.text += '$';
            mark(i + 2, false);
            prev = '$';
            i += 2;
            continue;
        }

        // `${` at offset i.
        size_t start = i;
        size_t j = i + 2;
        size_t name_begin = j;
        if (j < in.size() && name_start(in[j])) {
            while (j < in.size() && name_char(in[j])) ++j;
        }
        std::string name(in.substr(name_begin, j - name_begin));
        std::optional<std::string> fallback;
        bool ok = !name.empty();
        if (ok && j < in.size() && in[j] == '}') {
            ++j;
        } else if (ok && j + 1 < in.size() && in[j] == ':' && in[j + 1] == '-') {
            size_t close = j + 2;
            while (close < in.size() && in[close] != '}' && in[close] != '\n') ++close;
            if (close >= in.size() || in[close] != '}') {
                out.errors.push_back(
                    {start, "unterminated ${" + shorten(name) + ":-... (missing \"}\")"});
                out.text += c;
                prev = c;
                ++i;
                continue;
            }
            fallback = std::string(in.substr(j + 2, close - (j + 2)));
            j = close + 1;
        } else {
            bool unterminated = ok && (j >= in.size() || in[j] == '\n');
            out.errors.push_back(
                {start, unterminated ? "unterminated ${" + shorten(name) + " (missing \"}\")"
                                     : std::string("invalid environment variable reference "
                                                   "(expected ${NAME} or ${NAME:-default})")});
            out.text += c;
            prev = c;
            ++i;
            continue;
        }

        std::optional<std::string> value = env != nullptr ? env(name) : std::nullopt;
        if (fallback && (!value || value->empty())) value = fallback;
        if (!value) {
            out.errors.push_back({start, "environment variable " + shorten(name) +
                                             " is not set (use ${" + shorten(name) +
                                             ":-default})"});
            value = std::string();
        }
        mark(start, true);
        out.text += *value;
        mark(j, false);
        if (!value->empty()) prev = value->back();
        i = j;
    }
    return out;
}

namespace {
bool continuation(char c) {
    return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}
}  // namespace

LineIndex::LineIndex(std::string_view text) : text_(text) {
    line_starts_.push_back(0);
    size_t conts = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        if (i % kStride == 0) continuation_checkpoints_.push_back(conts);
        if (text[i] == '\n') line_starts_.push_back(i + 1);
        if (continuation(text[i])) ++conts;
    }
}

size_t LineIndex::continuation_bytes_before(size_t offset) const {
    if (continuation_checkpoints_.empty()) return 0;
    size_t k = std::min(offset / kStride, continuation_checkpoints_.size() - 1);
    size_t n = continuation_checkpoints_[k];
    for (size_t i = k * kStride; i < offset; ++i) n += continuation(text_[i]) ? 1 : 0;
    return n;
}

Position LineIndex::at(size_t offset) const {
    offset = std::min(offset, text_.size());
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    size_t line = static_cast<size_t>(it - line_starts_.begin());  // 1-based
    size_t begin = line_starts_[line - 1];
    // Columns count characters: continuation bytes do not start one.
    size_t chars =
        (offset - begin) - (continuation_bytes_before(offset) - continuation_bytes_before(begin));
    return Position{static_cast<int>(line), static_cast<int>(chars) + 1};
}

}  // namespace tcpfault::config
