#include "api/toxiproxy_json.hpp"

#include <cmath>
#include <limits>

#include "api/http_parser.hpp"

namespace tcpfault::toxiproxy {

namespace {

struct TooDeep {};

// nlohmann's messages start with "[json.exception.parse_error.101] "; the rest is the reason.
// It may quote the offending token: keep it short.
std::string reason(const char* what) {
    std::string s = what;
    if (s.starts_with("[json.exception.")) {
        size_t end = s.find("] ");
        if (end != std::string::npos) s.erase(0, end + 2);
    }
    constexpr size_t kMax = 300;
    if (s.size() > kMax) s = s.substr(0, kMax) + "...";
    return s;
}

std::string type_error(std::string_view where, std::string_view name, const char* expected,
                       const Json& found) {
    return std::string(where) + std::string(name) + ": expected " + expected + ", found " +
           kind_of(found);
}

}  // namespace

bool parse_json(std::string_view text, Json& out, std::string* error) {
    if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
        *error = "empty body";
        return false;
    }
    Json::parser_callback_t depth_guard = [](int depth, nlohmann::json::parse_event_t, Json&) {
        if (depth > kMaxBodyDepth) throw TooDeep{};
        return true;
    };
    try {
        out = Json::parse(text.begin(), text.end(), depth_guard);
    } catch (const Json::parse_error& e) {
        *error = reason(e.what());
        return false;
    } catch (const TooDeep&) {
        *error = "nesting deeper than " + std::to_string(kMaxBodyDepth) + " levels";
        return false;
    }
    return true;
}

std::string dump(const Json& v) {
    return v.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string kind_of(const Json& v) {
    switch (v.type()) {
        case Json::value_t::null:
            return "null";
        case Json::value_t::object:
            return "an object";
        case Json::value_t::array:
            return "an array";
        case Json::value_t::string:
            return "a string";
        case Json::value_t::boolean:
            return "a boolean";
        case Json::value_t::number_integer:
        case Json::value_t::number_unsigned:
        case Json::value_t::number_float:
            return "the number " + dump(v);
        default:
            return "a value";
    }
}

const Json* field(const Json& obj, std::string_view name) {
    if (!obj.is_object()) return nullptr;
    const Json* found = nullptr;
    for (auto it = obj.begin(); it != obj.end(); ++it)
        if (ascii_iequals(it.key(), name)) found = &it.value();
    return found != nullptr && !found->is_null() ? found : nullptr;
}

std::string read_string(const Json& obj, std::string_view name, std::string& out) {
    const Json* v = field(obj, name);
    if (v == nullptr) return "";
    if (!v->is_string()) return type_error("", name, "a string", *v);
    out = v->get<std::string>();
    return "";
}

std::string read_bool(const Json& obj, std::string_view name, bool& out) {
    const Json* v = field(obj, name);
    if (v == nullptr) return "";
    if (!v->is_boolean()) return type_error("", name, "true or false", *v);
    out = v->get<bool>();
    return "";
}

std::string read_number(const Json& obj, std::string_view name, double& out) {
    const Json* v = field(obj, name);
    if (v == nullptr) return "";
    if (!v->is_number()) return type_error("", name, "a number", *v);
    out = v->get<double>();
    return "";
}

std::string read_int(const Json& obj, std::string_view name, int64_t& out, std::string_view where) {
    const Json* v = field(obj, name);
    if (v == nullptr) return "";
    if (v->is_number_integer() && !v->is_number_unsigned()) {
        out = v->get<int64_t>();
        return "";
    }
    if (v->is_number_unsigned() &&
        v->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        out = static_cast<int64_t>(v->get<uint64_t>());
        return "";
    }
    return type_error(where, name, "an integer (64-bit)", *v);
}

Json go_number(double v) {
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15)
        return static_cast<int64_t>(v);
    if (!std::isfinite(v)) return nullptr;
    return v;
}

std::string check_name(std::string_view name, std::string_view what) {
    if (name.size() > kMaxName)
        return std::string(what) + " too long: " + std::to_string(name.size()) +
               " bytes (at most " + std::to_string(kMaxName) + ")";
    for (unsigned char c : name) {
        if (c < 0x20 || c == 0x7f) return std::string(what) + " contains a control character";
        if (c == '/') return std::string(what) + " contains \"/\"";
    }
    return "";
}

}  // namespace tcpfault::toxiproxy
