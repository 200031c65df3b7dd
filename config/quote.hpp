// Values quoted in diagnostics (`--check`, reload errors, API 400s). A value is shown in full
// up to kQuoteBytes; a longer one is cut there (at a UTF-8 boundary) and its size is given,
// so one 70,000-character line does not make a 70,000-character message:
//   "xxxxxxxx..." (70000 bytes)
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tcpfault::config {

inline constexpr size_t kQuoteBytes = 80;

// `"text"`, control characters escaped (\n, \t, \x01), '"' and '\' escaped; cut as above.
std::string quote_value(std::string_view s);
// The text itself (for names and numbers that are shown bare), cut as above.
std::string shorten(std::string_view s);

}  // namespace tcpfault::config
