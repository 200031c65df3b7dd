// JSON in and out of the Toxiproxy API, on nlohmann-json. Bodies are read the way Toxiproxy's
// Go decoder reads them into its structs where clients can tell: object keys match
// case-insensitively (the last matching key wins), unknown keys are ignored and `null` leaves a
// field as it was. Type errors get tcpfault's own messages, not Go's.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace tcpfault::toxiproxy {

// Objects keep their keys in insertion order: responses list fields in Toxiproxy's order.
using Json = nlohmann::ordered_json;

// Deepest nesting a body may have; Toxiproxy's bodies are two levels deep.
inline constexpr int kMaxBodyDepth = 32;

// Parses a request body (or a -config file); on failure returns false and sets *error to a
// short reason ("empty body", "syntax error at line 1, column 7: ...").
bool parse_json(std::string_view text, Json& out, std::string* error);

// The serialised value; strings that are not UTF-8 (none can come from parse_json) would get
// U+FFFD, so the output is always valid UTF-8 JSON.
std::string dump(const Json& v);

// "a string", "a number", "an object", ... for messages.
std::string kind_of(const Json& v);

// The member of `obj` Go would decode into the field `name`, or null when there is none or it
// is JSON null.
const Json* field(const Json& obj, std::string_view name);

// Typed fields: absent or null leave `out` as it was; a value of another type gives a message
// naming the field (`where` prefixes it, e.g. "attributes."), else "".
std::string read_string(const Json& obj, std::string_view name, std::string& out);
std::string read_bool(const Json& obj, std::string_view name, bool& out);
std::string read_number(const Json& obj, std::string_view name, double& out);
std::string read_int(const Json& obj, std::string_view name, int64_t& out,
                     std::string_view where = "");

// A number as Go writes a float: integral values without a fraction ("1", not "1.0").
Json go_number(double v);

// Toxiproxy's names (proxies, toxics) are free text; tcpfault bounds them: at most kMaxName
// bytes, no control characters, no "/" (it could not appear in a URL path segment). "" or why
// the name is refused; `what` is "proxy name" or "toxic name".
inline constexpr size_t kMaxName = 128;
std::string check_name(std::string_view name, std::string_view what);

// Addresses as given (listen, upstream) are bounded too.
inline constexpr size_t kMaxAddress = 512;

}  // namespace tcpfault::toxiproxy
