// `${VAR}` / `${VAR:-default}` expansion over the raw config text, before YAML parsing (so a
// variable can supply any YAML, e.g. a whole flow mapping). Decisions (docs/config.md):
// - `${VAR:-default}` uses the default when VAR is unset *or empty*, as in the shell.
// - `$$` is a literal `$`; any other `$` not followed by `{` is left alone.
// - The default is literal text up to the first `}` on the same line (no nesting).
// - Comments are copied verbatim, so a commented-out `${UNSET}` is not an error.
// Positions in the expanded text map back to the original text, so diagnostics point at what
// the user wrote; anything inside a substituted value points at its `${`.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"

namespace tcpfault::config {

struct EnvError {
    size_t offset;  // of the `${` in the original text
    std::string message;
};

class EnvExpansion {
  public:
    std::string text;
    std::vector<EnvError> errors;

    size_t original_offset(size_t expanded_offset) const;

  private:
    friend EnvExpansion expand_env(std::string_view, EnvLookup);
    struct Segment {
        size_t expanded;
        size_t original;
        bool substituted;  // true: every offset inside maps to `original`
    };
    std::vector<Segment> segments_;
};

EnvExpansion expand_env(std::string_view text, EnvLookup env);

// Byte offset -> 1-based line and column (columns count UTF-8 characters, as editors do).
// Keeps a view: the text must outlive the index.
class LineIndex {
  public:
    explicit LineIndex(std::string_view text);
    Position at(size_t offset) const;

  private:
    size_t continuation_bytes_before(size_t offset) const;

    std::string_view text_;
    std::vector<size_t> line_starts_;
    // UTF-8 continuation bytes before each multiple of kStride: keeps a column lookup on a
    // megabyte-long line (minified JSON, huge flow sequences) from rescanning the line.
    static constexpr size_t kStride = 256;
    std::vector<size_t> continuation_checkpoints_;
};

}  // namespace tcpfault::config
