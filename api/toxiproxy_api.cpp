#include "api/toxiproxy_api.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <set>
#include <string_view>

#include "config/units.hpp"
#include "observe/log.hpp"

namespace tcpfault {

namespace {

// ---------------------------------------------------------------------------------------------
// JSON in: a small strict parser. Bodies are decoded the way Go's encoding/json decodes them
// into Toxiproxy's structs (keys matched case-insensitively, the last one winning, unknown keys
// ignored, null leaving a field as it was, wrong types reported), with Go's messages, because
// clients show those messages to users.

struct Json {
    enum class Kind { null, boolean, number, string, array, object };
    Kind kind = Kind::null;
    bool b = false;
    std::string text;  // a string's value, or a number's literal text
    std::vector<Json> items;
    std::vector<std::pair<std::string, Json>> members;
};

const char* kind_name(Json::Kind k) {
    switch (k) {
        case Json::Kind::null:
            return "null";
        case Json::Kind::boolean:
            return "bool";
        case Json::Kind::number:
            return "number";
        case Json::Kind::string:
            return "string";
        case Json::Kind::array:
            return "array";
        case Json::Kind::object:
            return "object";
    }
    return "value";
}

// The member Go would decode into the field `name`: keys match case-insensitively and the last
// matching key wins.
const Json* field(const Json& obj, std::string_view name) {
    const Json* found = nullptr;
    for (const auto& [k, v] : obj.members)
        if (ascii_iequals(k, name)) found = &v;
    return found;
}

class JsonParser {
  public:
    explicit JsonParser(std::string_view s) : s_(s) {}

    // The first value in the text; what follows it is ignored, as Go's json.Decoder does.
    bool parse(Json& out, std::string* err) {
        skip_ws();
        if (i_ >= s_.size()) {
            *err = "EOF";
            return false;
        }
        if (!value(out, 0)) {
            *err = err_;
            return false;
        }
        return true;
    }

  private:
    static constexpr int kMaxDepth = 512;

    void skip_ws() {
        while (i_ < s_.size() &&
               (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
            ++i_;
    }

    static std::string quote_char(char c) {
        if (c == '\'') return "'\\''";
        if (c == '"') return "'\"'";
        if (c == '\n') return "'\\n'";
        if (c == '\r') return "'\\r'";
        if (c == '\t') return "'\\t'";
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u >= 0x7f) {
            static const char hex[] = "0123456789abcdef";
            return std::string("'\\x") + hex[u >> 4] + hex[u & 15] + "'";
        }
        return std::string("'") + c + "'";
    }

    bool fail(std::string context) {
        if (i_ >= s_.size())
            err_ = "unexpected EOF";
        else
            err_ = "invalid character " + quote_char(s_[i_]) + " " + context;
        return false;
    }

    bool value(Json& out, int depth) {
        skip_ws();
        if (i_ >= s_.size()) return fail("");
        if (depth > kMaxDepth) {
            err_ = "exceeded max depth";
            return false;
        }
        char c = s_[i_];
        if (c == '{') return object(out, depth);
        if (c == '[') return array(out, depth);
        if (c == '"') {
            out.kind = Json::Kind::string;
            return string(out.text);
        }
        if (c == '-' || (c >= '0' && c <= '9')) return number(out);
        if (c == 't') return literal("true", out, Json::Kind::boolean, true);
        if (c == 'f') return literal("false", out, Json::Kind::boolean, false);
        if (c == 'n') return literal("null", out, Json::Kind::null, false);
        return fail("looking for beginning of value");
    }

    bool literal(std::string_view word, Json& out, Json::Kind kind, bool b) {
        for (size_t k = 0; k < word.size(); ++k, ++i_) {
            if (i_ >= s_.size() || s_[i_] != word[k])
                return fail("in literal " + std::string(word) + " (expecting '" + word[k] + "')");
        }
        out.kind = kind;
        out.b = b;
        return true;
    }

    bool digits() {
        size_t start = i_;
        while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
        return i_ > start;
    }

    bool number(Json& out) {
        size_t start = i_;
        if (s_[i_] == '-') ++i_;
        if (i_ >= s_.size()) return fail("");
        if (s_[i_] == '0') {
            ++i_;
        } else if (!digits()) {
            return fail("in numeric literal");
        }
        if (i_ < s_.size() && s_[i_] == '.') {
            ++i_;
            if (!digits()) return fail("after decimal point in numeric literal");
        }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            ++i_;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
            if (!digits()) return fail("in exponent of numeric literal");
        }
        out.kind = Json::Kind::number;
        out.text = std::string(s_.substr(start, i_ - start));
        return true;
    }

    static void put_utf8(std::string& out, uint32_t cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xc0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xe0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        } else {
            out += static_cast<char>(0xf0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
            out += static_cast<char>(0x80 | (cp & 0x3f));
        }
    }

    bool hex4(uint32_t* v) {
        *v = 0;
        for (int k = 0; k < 4; ++k, ++i_) {
            if (i_ >= s_.size()) return fail("");
            char c = s_[i_];
            uint32_t d;
            if (c >= '0' && c <= '9')
                d = static_cast<uint32_t>(c - '0');
            else if (c >= 'a' && c <= 'f')
                d = static_cast<uint32_t>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F')
                d = static_cast<uint32_t>(c - 'A' + 10);
            else
                return fail("in \\u hexadecimal character escape");
            *v = *v * 16 + d;
        }
        return true;
    }

    bool string(std::string& out) {
        ++i_;  // opening quote
        out.clear();
        while (true) {
            if (i_ >= s_.size()) return fail("");
            char c = s_[i_];
            if (c == '"') {
                ++i_;
                return true;
            }
            if (static_cast<unsigned char>(c) < 0x20) return fail("in string literal");
            if (c != '\\') {
                out += c;
                ++i_;
                continue;
            }
            ++i_;
            if (i_ >= s_.size()) return fail("");
            char e = s_[i_];
            switch (e) {
                case '"':
                    out += '"';
                    break;
                case '\\':
                    out += '\\';
                    break;
                case '/':
                    out += '/';
                    break;
                case 'b':
                    out += '\b';
                    break;
                case 'f':
                    out += '\f';
                    break;
                case 'n':
                    out += '\n';
                    break;
                case 'r':
                    out += '\r';
                    break;
                case 't':
                    out += '\t';
                    break;
                case 'u': {
                    ++i_;
                    uint32_t cp;
                    if (!hex4(&cp)) return false;
                    if (cp >= 0xd800 && cp < 0xdc00 && i_ + 1 < s_.size() && s_[i_] == '\\' &&
                        s_[i_ + 1] == 'u') {
                        size_t save = i_;
                        i_ += 2;
                        uint32_t lo;
                        if (!hex4(&lo)) return false;
                        if (lo >= 0xdc00 && lo < 0xe000) {
                            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        } else {
                            i_ = save;  // not a pair: the lone surrogate is replaced below
                        }
                    }
                    if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
                    put_utf8(out, cp);
                    continue;  // i_ already past the escape
                }
                default:
                    return fail("in string escape code");
            }
            ++i_;
        }
    }

    bool array(Json& out, int depth) {
        ++i_;
        out.kind = Json::Kind::array;
        skip_ws();
        if (i_ < s_.size() && s_[i_] == ']') {
            ++i_;
            return true;
        }
        while (true) {
            out.items.emplace_back();
            if (!value(out.items.back(), depth + 1)) return false;
            skip_ws();
            if (i_ >= s_.size()) return fail("");
            if (s_[i_] == ',') {
                ++i_;
                continue;
            }
            if (s_[i_] == ']') {
                ++i_;
                return true;
            }
            return fail("after array element");
        }
    }

    bool object(Json& out, int depth) {
        ++i_;
        out.kind = Json::Kind::object;
        skip_ws();
        if (i_ < s_.size() && s_[i_] == '}') {
            ++i_;
            return true;
        }
        while (true) {
            skip_ws();
            if (i_ >= s_.size() || s_[i_] != '"')
                return fail("looking for beginning of object key string");
            std::string key;
            if (!string(key)) return false;
            skip_ws();
            if (i_ >= s_.size() || s_[i_] != ':') return fail("after object key");
            ++i_;
            out.members.emplace_back(std::move(key), Json{});
            if (!value(out.members.back().second, depth + 1)) return false;
            skip_ws();
            if (i_ >= s_.size()) return fail("");
            if (s_[i_] == ',') {
                ++i_;
                continue;
            }
            if (s_[i_] == '}') {
                ++i_;
                return true;
            }
            return fail("after object key:value pair");
        }
    }

    std::string_view s_;
    size_t i_ = 0;
    std::string err_;
};

// Decodes fields of one JSON object into typed values, keeping Go's first type error.
class Decoder {
  public:
    explicit Decoder(std::string go_struct) : struct_(std::move(go_struct)) {}

    void text(const Json& obj, std::string_view name, std::string& out) {
        const Json* v = field(obj, name);
        if (v == nullptr || v->kind == Json::Kind::null) return;
        if (v->kind != Json::Kind::string) return type_error(*v, name, "string");
        out = v->text;
    }

    void boolean(const Json& obj, std::string_view name, bool& out, const char* go_type = "bool") {
        const Json* v = field(obj, name);
        if (v == nullptr || v->kind == Json::Kind::null) return;
        if (v->kind != Json::Kind::boolean) return type_error(*v, name, go_type);
        out = v->b;
    }

    // Go's int64 (or int: the same on 64-bit platforms): an integer literal in range.
    void integer(const Json& obj, std::string_view name, int64_t& out, const char* go_type) {
        const Json* v = field(obj, name);
        if (v == nullptr || v->kind == Json::Kind::null) return;
        if (v->kind != Json::Kind::number) return type_error(*v, name, go_type);
        int64_t n = 0;
        const char* b = v->text.data();
        const char* e = b + v->text.size();
        auto r = std::from_chars(b, e, n);
        if (r.ec != std::errc() || r.ptr != e) return type_error(*v, name, go_type, true);
        out = n;
    }

    void float32(const Json& obj, std::string_view name, float& out) {
        const Json* v = field(obj, name);
        if (v == nullptr || v->kind == Json::Kind::null) return;
        if (v->kind != Json::Kind::number) return type_error(*v, name, "float32");
        double d = std::strtod(v->text.c_str(), nullptr);
        if (!std::isfinite(d) || std::fabs(d) > std::numeric_limits<float>::max())
            return type_error(*v, name, "float32", true);
        out = static_cast<float>(d);
    }

    void type_error(const Json& v, std::string_view name, const char* go_type,
                    bool with_value = false) {
        if (!err_.empty()) return;
        err_ = std::string("json: cannot unmarshal ") + kind_name(v.kind) +
               (with_value ? " " + v.text : "") + " into Go struct field " + struct_ + "." +
               std::string(name) + " of type " + go_type;
    }

    const std::string& error() const { return err_; }

  private:
    std::string struct_;
    std::string err_;
};

std::string value_type_error(const Json& v, const char* go_type) {
    return std::string("json: cannot unmarshal ") + kind_name(v.kind) + " into Go value of type " +
           go_type;
}

// ---------------------------------------------------------------------------------------------
// JSON out, as Go's encoding/json writes it (HTML-safe escaping, float32 formatting).

std::string go_quote(std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (size_t i = 0; i < s.size(); ++i) {
        auto c = static_cast<unsigned char>(s[i]);
        switch (c) {
            case '"':
                out += "\\\"";
                continue;
            case '\\':
                out += "\\\\";
                continue;
            case '\n':
                out += "\\n";
                continue;
            case '\r':
                out += "\\r";
                continue;
            case '\t':
                out += "\\t";
                continue;
            case '<':
            case '>':
            case '&':
                out += "\\u00";
                out += hex[c >> 4];
                out += hex[c & 15];
                continue;
            default:
                break;
        }
        if (c < 0x20) {
            out += "\\u00";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else if (c == 0xe2 && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
                   (static_cast<unsigned char>(s[i + 2]) == 0xa8 ||
                    static_cast<unsigned char>(s[i + 2]) == 0xa9)) {
            out += static_cast<unsigned char>(s[i + 2]) == 0xa8 ? "\\u2028" : "\\u2029";
            i += 2;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out + "\"";
}

std::string go_float32(float f) {
    if (f == 0) return std::signbit(f) ? "-0" : "0";
    char buf[64];
    double a = std::fabs(static_cast<double>(f));
    bool sci = a < 1e-6 || a >= 1e21;
    auto r = std::to_chars(buf, buf + sizeof buf, f,
                           sci ? std::chars_format::scientific : std::chars_format::fixed);
    std::string s(buf, r.ptr);
    // Go writes e-07 as e-7.
    size_t n = s.size();
    if (sci && n >= 4 && s[n - 4] == 'e' && s[n - 3] == '-' && s[n - 2] == '0') s.erase(n - 2, 1);
    return s;
}

// ---------------------------------------------------------------------------------------------
// Responses

HttpResponse json_response(int status, std::string body) {
    HttpResponse r;
    r.status = status;
    r.body = std::move(body);
    return r;
}

// Toxiproxy's error body: {"error":"...","status":N} and a newline (Go's http.Error).
HttpResponse api_error(int status, std::string_view message) {
    return json_response(status, "{\"error\":" + go_quote(message) +
                                     ",\"status\":" + std::to_string(status) + "}\n");
}

HttpResponse bad_body(std::string_view err) {
    return api_error(400, "bad request body: " + std::string(err));
}

HttpResponse no_content() {
    HttpResponse r;
    r.status = 204;
    r.content_type.clear();
    return r;
}

HttpResponse text_response(int status, std::string body) {
    HttpResponse r;
    r.status = status;
    r.content_type = "text/plain; charset=utf-8";
    r.body = std::move(body);
    return r;
}

// ---------------------------------------------------------------------------------------------
// Toxic types

struct ToxicKind {
    const char* type;
    const char* go_struct;  // for error messages
    const char* int_type;   // Go type of the attributes
    std::vector<const char*> fields;
};

const ToxicKind* toxic_kind(std::string_view type) {
    static const std::vector<ToxicKind> kinds = {
        {"latency", "LatencyToxic", "int64", {"latency", "jitter"}},
        {"bandwidth", "BandwidthToxic", "int64", {"rate"}},
        {"slow_close", "SlowCloseToxic", "int64", {"delay"}},
        {"timeout", "TimeoutToxic", "int64", {"timeout"}},
        {"reset_peer", "ResetToxic", "int64", {"timeout"}},
        {"slicer", "SlicerToxic", "int", {"average_size", "size_variation", "delay"}},
        {"limit_data", "LimitDataToxic", "int64", {"bytes"}},
        {"noop", "NoopToxic", "int64", {}},
    };
    for (const auto& k : kinds)
        if (type == k.type) return &k;
    return nullptr;
}

// Decodes `attributes` (an object, or null: unchanged) into t's fields.
std::string decode_attributes(const Json* attrs, const ToxicKind& kind, ToxiproxyApi::Toxic& t) {
    if (attrs == nullptr || attrs->kind == Json::Kind::null) return "";
    if (attrs->kind != Json::Kind::object)
        return std::string("json: cannot unmarshal ") + kind_name(attrs->kind) +
               " into Go struct field .attributes of type toxics." + kind.go_struct;
    Decoder d(kind.go_struct);
    for (auto& [name, value] : t.attributes) d.integer(*attrs, name, value, kind.int_type);
    if (!d.error().empty()) {
        // Go names the field by its path: LatencyToxic.attributes.latency.
        std::string e = d.error();
        std::string from = std::string(" Go struct field ") + kind.go_struct + ".";
        size_t at = e.find(from);
        if (at != std::string::npos) e.insert(at + from.size(), "attributes.");
        return e;
    }
    return "";
}

int64_t attr(const ToxiproxyApi::Toxic& t, std::string_view name) {
    for (const auto& [k, v] : t.attributes)
        if (k == name) return v;
    return 0;
}

config::Duration clamp_duration(int64_t v, int64_t unit_us) {
    if (v <= 0) return config::Duration{0};
    int64_t max_units = config::kMaxDuration.count() / unit_us;
    if (v >= max_units) return config::kMaxDuration;
    return config::Duration{v * unit_us};
}

config::Duration ms(int64_t v) {
    return clamp_duration(v, 1000);
}
config::Duration us(int64_t v) {
    return clamp_duration(v, 1);
}

config::Rule* find_rule(config::Proxy& c, std::string_view name) {
    for (auto& r : c.rules)
        if (r.name == name) return &r;
    return nullptr;
}

const config::Rule* find_rule(const config::Proxy& c, std::string_view name) {
    for (const auto& r : c.rules)
        if (r.name == name) return &r;
    return nullptr;
}

// A `when` that matches at the first byte the stream carries from now on (an empty `data`
// matches at offset 0 of the first chunk the trigger sees). With after_bytes 0 the fault acts
// before that byte is passed on; with an `after` as well, the stream is held there until the
// time has passed.
config::When first_data(config::Direction dir) {
    config::When w;
    w.direction = dir;
    w.data = std::string();
    w.after_bytes = 0;
    return w;
}

config::Rule disabled_rule(bool on) {
    config::Rule r;
    r.name = ToxiproxyApi::kDisabledRule;
    r.enabled = on;
    r.fault = config::RefuseFault{};
    return r;
}

// Go's net.Listen semantics for a listen text: "" and ":port" mean every interface (dual
// stack), and a name is resolved IPv4-first, so "localhost" is 127.0.0.1.
std::optional<config::HostPort> parse_listen(const std::string& text, std::string* err) {
    std::string t = text.empty() ? ":0" : text;
    size_t colon = t.rfind(':');
    if (colon == std::string::npos) {
        *err = "listen tcp " + text + ": address " + text + ": missing port in address";
        return std::nullopt;
    }
    std::string host = t.substr(0, colon);
    if (host.empty())
        t = "[::]" + t.substr(colon);
    else if (ascii_iequals(host, "localhost"))
        t = "127.0.0.1" + t.substr(colon);
    auto hp = config::parse_host_port(t, true);
    if (!hp) {
        *err = "listen tcp " + text + ": " + hp.error;
        return std::nullopt;
    }
    return *hp;
}

std::optional<config::HostPort> parse_upstream(const std::string& text, std::string* err) {
    auto hp = config::parse_host_port(text, false);
    if (!hp) {
        *err = "invalid upstream address \"" + text + "\": " + hp.error;
        return std::nullopt;
    }
    return *hp;
}

// True if a populate entry's listen text describes the address the proxy has: the same text,
// or the same host with the same port (or port 0, "any").
bool same_listen(const std::string& wanted, const std::string& actual) {
    if (wanted == actual) return true;
    std::string err;
    auto w = parse_listen(wanted, &err);
    auto a = config::parse_host_port(actual, true);
    if (!w || !a) return false;
    return w->host == a->host && (w->port == a->port || w->port == 0);
}

std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    if (path.empty() || path[0] != '/') return parts;
    size_t i = 1;
    while (true) {
        size_t j = path.find('/', i);
        if (j == std::string::npos) {
            parts.push_back(path.substr(i));
            return parts;
        }
        parts.push_back(path.substr(i, j - i));
        i = j + 1;
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Mapping

std::string ToxiproxyApi::sanitize(const std::string& name) {
    std::string out;
    for (char c : name) {
        if (c >= 'A' && c <= 'Z')
            out += static_cast<char>(c - 'A' + 'a');
        else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')
            out += c;
        else
            out += '-';
    }
    return out.empty() ? "toxiproxy" : out;
}

config::Rule ToxiproxyApi::to_rule(const Toxic& t) {
    using config::Direction;
    config::Rule r;
    r.name = t.rule;
    r.enabled = true;
    r.match.existing = true;  // toxics act on open connections too
    if (!(t.toxicity >= 1.0f)) r.match.probability = std::max(0.0, static_cast<double>(t.toxicity));
    Direction dir = t.upstream ? Direction::upstream : Direction::downstream;
    const std::string& type = t.type;
    if (type == "latency") {
        config::LatencyFault f;
        f.delay = ms(attr(t, "latency"));
        f.jitter = ms(attr(t, "jitter"));
        f.direction = dir;
        r.fault = f;
    } else if (type == "bandwidth") {
        int64_t rate = attr(t, "rate");
        if (rate <= 0) {
            // Toxiproxy then lets nothing through (and does not read): a stall that holds.
            config::StallFault f;
            f.direction = dir;
            f.mode = config::StallFault::Mode::hold;
            r.fault = f;
        } else {
            config::BandwidthFault f;
            // KB/s, and Toxiproxy's KB is 1000 bytes (it sleeps len/rate milliseconds).
            constexpr int64_t kMaxRate = std::numeric_limits<int64_t>::max() / 1000;
            f.rate = static_cast<uint64_t>(std::min(rate, kMaxRate)) * 1000;
            f.direction = dir;
            r.fault = f;
        }
    } else if (type == "slow_close") {
        config::SlowCloseFault f;
        f.delay = ms(attr(t, "delay"));
        f.direction = dir;
        r.fault = f;
    } else if (type == "timeout") {
        // Data in the stream is dropped; after `timeout` the connection is closed; 0: never.
        // The stream's own close still goes through, as in Toxiproxy.
        config::StallFault f;
        f.direction = dir;
        f.mode = config::StallFault::Mode::drop;
        f.pass_close = true;
        int64_t timeout = attr(t, "timeout");
        if (timeout > 0) {
            f.duration = ms(timeout);
            f.then = config::StallFault::Then::close;
        }
        r.fault = f;
    } else if (type == "reset_peer") {
        // Toxiproxy waits for the stream's first data, swallows it, waits `timeout`, then
        // resets. `data: ""` matches at the first byte that comes (on an open connection: the
        // next one); after_bytes 0 holds the stream right there until `after` has passed; the
        // reset without flush discards what was held.
        config::ResetFault f;
        f.to = config::Target::both;
        f.flush = false;
        r.fault = f;
        r.when = first_data(dir);
        int64_t timeout = attr(t, "timeout");
        if (timeout > 0) r.when->after = ms(timeout);
    } else if (type == "slicer") {
        int64_t avg = std::max<int64_t>(0, attr(t, "average_size"));
        int64_t var = std::max<int64_t>(0, attr(t, "size_variation"));
        config::SliceFault f;
        f.min_size = static_cast<uint64_t>(std::max<int64_t>(1, avg - var));
        f.max_size = std::max(f.min_size, static_cast<uint64_t>(avg) + static_cast<uint64_t>(var));
        f.delay = us(attr(t, "delay"));
        f.direction = dir;
        r.fault = f;
    } else if (type == "limit_data") {
        // Counted from the first data after the toxic is added, as Toxiproxy's per-link state
        // is; `bytes: 0` closes at the first data, which is not passed on.
        config::CloseFault f;
        f.to = config::Target::both;
        f.then = config::CloseFault::Then::reset;
        r.fault = f;
        r.when = first_data(dir);
        r.when->after_bytes = static_cast<uint64_t>(std::max<int64_t>(0, attr(t, "bytes")));
    } else {
        // noop: a rule that does nothing, so the toxic is still an ordinary rule.
        config::LatencyFault f;
        f.direction = dir;
        r.fault = f;
    }
    return r;
}

std::string ToxiproxyApi::toxic_json(const Toxic& t) {
    std::string out = "{\"attributes\":{";
    for (size_t i = 0; i < t.attributes.size(); ++i) {
        if (i > 0) out += ",";
        out += go_quote(t.attributes[i].first) + ":" + std::to_string(t.attributes[i].second);
    }
    return out + "},\"name\":" + go_quote(t.name) + ",\"type\":" + go_quote(t.type) +
           ",\"stream\":" + go_quote(t.stream) + ",\"toxicity\":" + go_float32(t.toxicity) + "}";
}

// ---------------------------------------------------------------------------------------------
// State

ProxyServer* ToxiproxyApi::lookup(const std::string& name) {
    for (auto& [tcp, st] : state_)
        if (st.toxi_name == name) {
            if (ProxyServer* p = hooks_.find(tcp)) return p;
        }
    ProxyServer* p = hooks_.find(name);
    if (p == nullptr) return nullptr;
    // A tcpfault name that belongs to a proxy known by another Toxiproxy name is not an alias.
    auto it = state_.find(name);
    if (it != state_.end() && it->second.toxi_name != name) return nullptr;
    return p;
}

std::string ToxiproxyApi::toxi_name(const ProxyServer& p) const {
    auto it = state_.find(p.name());
    return it == state_.end() ? p.name() : it->second.toxi_name;
}

std::string ToxiproxyApi::upstream_text(const ProxyServer& p) const {
    auto it = state_.find(p.name());
    if (it != state_.end() && !it->second.upstream.empty()) return it->second.upstream;
    return p.config().upstream.str();
}

bool ToxiproxyApi::enabled(const ProxyServer& p) {
    const config::Rule* r = find_rule(p.config(), kDisabledRule);
    return r == nullptr || !r->enabled;
}

std::vector<ToxiproxyApi::Toxic>& ToxiproxyApi::toxics(const ProxyServer& p) {
    auto [it, inserted] = state_.try_emplace(p.name());
    if (inserted) it->second.toxi_name = p.name();
    auto& ts = it->second.toxics;
    ts.erase(
        std::remove_if(ts.begin(), ts.end(),
                       [&](const Toxic& t) { return find_rule(p.config(), t.rule) == nullptr; }),
        ts.end());
    return ts;
}

std::string ToxiproxyApi::proxy_json(ProxyServer& p) {
    std::string out = "{\"name\":" + go_quote(toxi_name(p)) +
                      ",\"listen\":" + go_quote(p.listen_addr()) +
                      ",\"upstream\":" + go_quote(upstream_text(p)) +
                      ",\"enabled\":" + (enabled(p) ? "true" : "false") + ",\"toxics\":[";
    bool first = true;
    // Toxiproxy lists the upstream chain, then the downstream one.
    for (bool upstream : {true, false}) {
        for (const Toxic& t : toxics(p)) {
            if (t.upstream != upstream) continue;
            out += (first ? "" : ",") + toxic_json(t);
            first = false;
        }
    }
    return out + "]}";
}

std::string ToxiproxyApi::unique_proxy_name(const std::string& toxi) {
    std::set<std::string> taken;
    for (ProxyServer* p : hooks_.servers()) taken.insert(p->name());
    std::string base = sanitize(toxi);
    std::string name = base;
    for (int n = 2; taken.count(name) > 0; ++n) name = base + "-" + std::to_string(n);
    return name;
}

std::string ToxiproxyApi::start(config::Proxy cfg, bool on, const std::string& toxi,
                                const std::string& upstream, std::vector<Toxic> toxics) {
    cfg.rules.erase(std::remove_if(cfg.rules.begin(), cfg.rules.end(),
                                   [](const config::Rule& r) { return r.name == kDisabledRule; }),
                    cfg.rules.end());
    if (!on) cfg.rules.push_back(disabled_rule(true));
    std::string err = hooks_.add_proxy(cfg);
    if (!err.empty() && cfg.listen.host == "::") {
        // "Every interface" where the host has no IPv6.
        cfg.listen.host = "0.0.0.0";
        err = hooks_.add_proxy(cfg);
    }
    if (!err.empty()) return err;
    state_[cfg.name] = ProxyState{toxi, upstream, std::move(toxics)};
    ProxyServer* p = hooks_.find(cfg.name);
    if (p != nullptr && !on) {
        // Bound (so the port is known), then taken down at once.
        p->restart(config::Duration{1});
    }
    return "";
}

void ToxiproxyApi::set_enabled(ProxyServer& p, bool on) {
    auto c = std::make_shared<config::Proxy>(p.config());
    config::Rule* r = find_rule(*c, kDisabledRule);
    if (r == nullptr && on) return;
    if (r == nullptr)
        c->rules.push_back(disabled_rule(true));
    else
        r->enabled = !on;
    p.update_config(c);
    if (!on) {
        // Toxiproxy closes every connection (FIN) and the listener. The refuse rule keeps the
        // listener closed from the proxy's next rule tick; restart() closes it right now (its
        // own reset finds every connection already closing).
        p.abort_sessions(false);
        p.restart(config::Duration{1});
    }
}

void ToxiproxyApi::stop(ProxyServer& p) {
    std::string name = p.name();
    p.abort_sessions(false);
    hooks_.remove_proxy(name);
}

// ---------------------------------------------------------------------------------------------
// Routes

HttpResponse ToxiproxyApi::handle(const HttpRequest& req) {
    HttpResponse r = route(req);
    if (req.method != "GET" && r.status < 300)
        log::info("toxiproxy api",
                  {{"method", req.method}, {"path", req.path}, {"status", r.status}});
    return r;
}

HttpResponse ToxiproxyApi::route(const HttpRequest& req) {
    // Forget proxies that went away behind our back (a reload).
    {
        std::set<std::string> live;
        for (ProxyServer* p : hooks_.servers()) live.insert(p->name());
        for (auto it = state_.begin(); it != state_.end();)
            it = live.count(it->first) ? std::next(it) : state_.erase(it);
    }

    std::vector<std::string> parts = split_path(req.path);
    for (const auto& s : parts)
        if (s.empty()) return text_response(404, "404 page not found\n");
    size_t n = parts.size();
    const std::string& m = req.method;

    // gorilla/mux: an unknown path is 404, a known path with another method 405 (empty body).
    std::vector<const char*> methods;
    if (n == 1 && parts[0] == "version")
        methods = {"GET"};
    else if (n == 1 && parts[0] == "reset")
        methods = {"POST"};
    else if (n == 1 && parts[0] == "populate")
        methods = {"POST"};
    else if (n == 1 && parts[0] == "proxies")
        methods = {"GET", "POST"};
    else if (n == 2 && parts[0] == "proxies")
        methods = {"GET", "POST", "PATCH", "DELETE"};
    else if (n == 3 && parts[0] == "proxies" && parts[2] == "toxics")
        methods = {"GET", "POST"};
    else if (n == 4 && parts[0] == "proxies" && parts[2] == "toxics")
        methods = {"GET", "POST", "PATCH", "DELETE"};
    else
        return text_response(404, "404 page not found\n");
    if (std::find(methods.begin(), methods.end(), m) == methods.end()) {
        HttpResponse r;
        r.status = 405;
        r.content_type.clear();
        return r;
    }
    // Toxiproxy refuses browsers, so a web page cannot drive it (CSRF).
    if (const std::string* ua = req.header("user-agent"); ua && ua->rfind("Mozilla/", 0) == 0)
        return text_response(403, "User agent not allowed\n");

    if (parts[0] == "version") {
        HttpResponse r = json_response(200, std::string("{\"version\": \"") + kVersion + "\"}\n");
        r.content_type = "application/json;charset=utf-8";
        return r;
    }
    if (parts[0] == "reset") return reset();
    if (parts[0] == "populate") return populate(req.body);
    if (n == 1) return m == "GET" ? list_proxies() : create_proxy(req.body);

    ProxyServer* p = lookup(parts[1]);
    if (p == nullptr) return api_error(404, "proxy not found");
    if (n == 2) {
        if (m == "GET") return json_response(200, proxy_json(*p));
        if (m == "DELETE") return delete_proxy(*p);
        return update_proxy(*p, req.body);
    }
    if (n == 3) return m == "GET" ? list_toxics(*p) : create_toxic(*p, req.body);
    const std::string& toxic = parts[3];
    if (m == "GET") {
        for (const Toxic& t : toxics(*p))
            if (t.name == toxic) return json_response(200, toxic_json(t));
        return api_error(404, "toxic not found");
    }
    if (m == "DELETE") return delete_toxic(*p, toxic);
    return update_toxic(*p, toxic, req.body);
}

HttpResponse ToxiproxyApi::list_proxies() {
    // A JSON object keyed by name; Go writes map keys sorted.
    std::map<std::string, std::string> by_name;
    for (ProxyServer* p : hooks_.servers()) by_name[toxi_name(*p)] = proxy_json(*p);
    std::string out = "{";
    bool first = true;
    for (const auto& [name, json] : by_name) {
        out += (first ? "" : ",") + go_quote(name) + ":" + json;
        first = false;
    }
    return json_response(200, out + "}");
}

HttpResponse ToxiproxyApi::create_proxy(const std::string& body) {
    Json v;
    std::string err;
    if (!JsonParser(body).parse(v, &err)) return bad_body(err);
    if (v.kind != Json::Kind::object && v.kind != Json::Kind::null)
        return bad_body(value_type_error(v, "toxiproxy.Proxy"));
    std::string name, listen, upstream;
    bool on = true;
    Decoder d("Proxy");
    if (v.kind == Json::Kind::object) {
        d.text(v, "name", name);
        d.text(v, "listen", listen);
        d.text(v, "upstream", upstream);
        d.boolean(v, "enabled", on);
    }
    if (!d.error().empty()) return bad_body(d.error());
    if (name.empty()) return api_error(400, "missing required field: name");
    if (upstream.empty()) return api_error(400, "missing required field: upstream");
    if (lookup(name) != nullptr) return api_error(409, "proxy already exists");

    auto up = parse_upstream(upstream, &err);
    if (!up) return api_error(400, err);
    auto l = parse_listen(listen, &err);
    if (!l) return api_error(500, err);
    config::Proxy cfg;
    cfg.name = unique_proxy_name(name);
    cfg.listen = *l;
    cfg.upstream = *up;
    err = start(cfg, on, name, upstream, {});
    if (!err.empty()) return api_error(500, err);
    ProxyServer* p = hooks_.find(cfg.name);
    if (p == nullptr) return api_error(500, "proxy " + name + " did not start");
    return json_response(201, proxy_json(*p));
}

HttpResponse ToxiproxyApi::populate(const std::string& body) {
    // Populate answers with {"error":..,"status":..,"proxies":[...]}: the proxies done so far.
    auto fail = [&](int status, const std::string& message, const std::string& proxies) {
        return json_response(status, "{\"error\":" + go_quote(message) + ",\"status\":" +
                                         std::to_string(status) + ",\"proxies\":" + proxies + "}");
    };
    Json v;
    std::string err;
    if (!JsonParser(body).parse(v, &err)) return fail(400, "bad request body: " + err, "null");
    if (v.kind != Json::Kind::array && v.kind != Json::Kind::null)
        return fail(400, "bad request body: " + value_type_error(v, "[]toxiproxy.Proxy"), "null");

    struct Entry {
        std::string name, listen, upstream;
        bool on = true;
        config::HostPort listen_hp, upstream_hp;
    };
    std::vector<Entry> entries;
    Decoder d("Proxy");
    for (const Json& item : v.items) {
        Entry e;
        if (item.kind == Json::Kind::object) {
            d.text(item, "name", e.name);
            d.text(item, "listen", e.listen);
            d.text(item, "upstream", e.upstream);
            d.boolean(item, "enabled", e.on, "*bool");
        } else if (item.kind != Json::Kind::null) {
            return fail(400, "bad request body: " + value_type_error(item, "toxiproxy.Proxy"),
                        "null");
        }
        entries.push_back(std::move(e));
    }
    if (!d.error().empty()) return fail(400, "bad request body: " + d.error(), "null");
    // Every entry is checked before anything changes.
    for (size_t i = 0; i < entries.size(); ++i) {
        Entry& e = entries[i];
        std::string at = " at proxy " + std::to_string(i + 1);
        if (e.name.empty()) return fail(400, "missing required field: name" + at, "null");
        if (e.upstream.empty()) return fail(400, "missing required field: upstream" + at, "null");
        auto up = parse_upstream(e.upstream, &err);
        if (!up) return fail(400, err + at, "null");
        auto l = parse_listen(e.listen, &err);
        if (!l) return fail(500, err + at, "null");
        e.upstream_hp = *up;
        e.listen_hp = *l;
    }

    std::vector<std::string> done;  // tcpfault names, resolved at the end
    auto proxies_json = [&] {
        if (done.empty()) return std::string("null");  // Go marshals the empty slice as null
        std::string out = "[";
        bool first = true;
        for (const auto& name : done) {
            ProxyServer* p = hooks_.find(name);
            if (p == nullptr) continue;
            out += (first ? "" : ",") + proxy_json(*p);
            first = false;
        }
        return out + "]";
    };
    for (const Entry& e : entries) {
        ProxyServer* existing = lookup(e.name);
        if (existing != nullptr && same_listen(e.listen, existing->listen_addr()) &&
            e.upstream == upstream_text(*existing)) {
            done.push_back(existing->name());  // untouched, toxics and all
            continue;
        }
        if (existing != nullptr) {
            std::string old = existing->name();
            stop(*existing);
            state_.erase(old);
        }
        config::Proxy cfg;
        cfg.name = unique_proxy_name(e.name);
        cfg.listen = e.listen_hp;
        cfg.upstream = e.upstream_hp;
        err = start(cfg, e.on, e.name, e.upstream, {});
        if (!err.empty()) return fail(500, err, proxies_json());
        done.push_back(cfg.name);
    }
    return json_response(201, "{\"proxies\":" + proxies_json() + "}");
}

HttpResponse ToxiproxyApi::update_proxy(ProxyServer& p, const std::string& body) {
    Json v;
    std::string err;
    if (!JsonParser(body).parse(v, &err)) return bad_body(err);
    if (v.kind != Json::Kind::object && v.kind != Json::Kind::null)
        return bad_body(value_type_error(v, "toxiproxy.Proxy"));
    const std::string cur_listen = p.listen_addr();
    const std::string cur_upstream = upstream_text(p);
    const bool cur_on = enabled(p);
    std::string listen = cur_listen, upstream = cur_upstream, name;
    bool on = cur_on;
    Decoder d("Proxy");
    if (v.kind == Json::Kind::object) {
        d.text(v, "name", name);  // decoded (type-checked) but a proxy keeps its name
        d.text(v, "listen", listen);
        d.text(v, "upstream", upstream);
        d.boolean(v, "enabled", on);
    }
    if (!d.error().empty()) return bad_body(d.error());

    const std::string tcp = p.name();
    if (listen != cur_listen || upstream != cur_upstream) {
        // Toxiproxy stops the proxy (closing every connection) and starts it again if enabled.
        auto up = parse_upstream(upstream, &err);
        if (!up) return api_error(400, err);
        config::Proxy cfg = p.config();
        cfg.upstream = *up;
        if (listen != cur_listen) {
            auto l = parse_listen(listen, &err);
            if (!l) return api_error(500, err);
            ProxyState st = state_[tcp];
            st.toxics = toxics(p);
            const config::HostPort old_upstream = p.config().upstream;
            stop(p);  // p is gone from here on
            state_.erase(tcp);
            config::HostPort old = cfg.listen;
            if (auto a = config::parse_host_port(cur_listen, true)) old = *a;
            cfg.listen = *l;
            err = start(cfg, on, st.toxi_name, upstream, st.toxics);
            if (!err.empty()) {
                // Toxiproxy keeps the proxy, down; here it stays down on its old address.
                cfg.listen = old;
                cfg.upstream = old_upstream;
                std::string again = start(cfg, false, st.toxi_name, cur_upstream, st.toxics);
                if (!again.empty())
                    log::warn("toxiproxy api: proxy lost", {{"proxy", tcp}, {"error", again}});
                return api_error(500, err);
            }
        } else {
            p.abort_sessions(false);
            auto c = std::make_shared<config::Proxy>(cfg);
            config::Rule* r = find_rule(*c, kDisabledRule);
            if (r != nullptr)
                r->enabled = !on;
            else if (!on)
                c->rules.push_back(disabled_rule(true));
            p.update_config(c);
            state_[tcp].upstream = upstream;
            if (!on) p.restart(config::Duration{1});
        }
    } else if (on != cur_on) {
        set_enabled(p, on);
    }
    ProxyServer* now = hooks_.find(tcp);
    if (now == nullptr) return api_error(404, "proxy not found");
    return json_response(200, proxy_json(*now));
}

HttpResponse ToxiproxyApi::delete_proxy(ProxyServer& p) {
    std::string tcp = p.name();
    stop(p);
    state_.erase(tcp);
    return no_content();
}

HttpResponse ToxiproxyApi::list_toxics(ProxyServer& p) {
    std::string out = "[";
    bool first = true;
    for (bool upstream : {true, false}) {
        for (const Toxic& t : toxics(p)) {
            if (t.upstream != upstream) continue;
            out += (first ? "" : ",") + toxic_json(t);
            first = false;
        }
    }
    return json_response(200, out + "]");
}

HttpResponse ToxiproxyApi::create_toxic(ProxyServer& p, const std::string& body) {
    Json v;
    std::string err;
    if (!JsonParser(body).parse(v, &err)) return bad_body(err);
    if (v.kind != Json::Kind::object && v.kind != Json::Kind::null)
        return bad_body(value_type_error(v, "toxics.ToxicWrapper"));
    Toxic t;
    t.stream = "downstream";
    Decoder d("ToxicWrapper");
    const Json* attrs = nullptr;
    if (v.kind == Json::Kind::object) {
        d.text(v, "name", t.name);
        d.text(v, "type", t.type);
        d.text(v, "stream", t.stream);
        d.float32(v, "toxicity", t.toxicity);
        attrs = field(v, "attributes");
        if (attrs != nullptr && attrs->kind != Json::Kind::null &&
            attrs->kind != Json::Kind::object)
            d.type_error(*attrs, "attributes", "toxics.NoopToxic");
    }
    if (!d.error().empty()) return bad_body(d.error());
    if (ascii_iequals(t.stream, "upstream"))
        t.upstream = true;
    else if (!ascii_iequals(t.stream, "downstream"))
        return api_error(400, "stream was invalid, can be either upstream or downstream");
    if (t.name.empty()) t.name = t.type + "_" + t.stream;
    const ToxicKind* kind = toxic_kind(t.type);
    if (kind == nullptr) return api_error(400, "invalid toxic type");
    std::vector<Toxic>& list = toxics(p);
    for (const Toxic& other : list)
        if (other.name == t.name) return api_error(409, "toxic already exists");
    for (const char* f : kind->fields) t.attributes.emplace_back(f, 0);
    err = decode_attributes(attrs, *kind, t);
    if (!err.empty()) return bad_body(err);

    auto c = std::make_shared<config::Proxy>(p.config());
    std::string base = sanitize(t.name);
    t.rule = base;
    for (int n = 2; find_rule(*c, t.rule) != nullptr || t.rule == kDisabledRule; ++n)
        t.rule = base + "-" + std::to_string(n);
    c->rules.push_back(to_rule(t));
    p.update_config(c);  // new rules also hit open connections (match.existing)
    list.push_back(t);
    return json_response(200, toxic_json(t));
}

HttpResponse ToxiproxyApi::update_toxic(ProxyServer& p, const std::string& name,
                                        const std::string& body) {
    std::vector<Toxic>& list = toxics(p);
    auto it =
        std::find_if(list.begin(), list.end(), [&](const Toxic& t) { return t.name == name; });
    if (it == list.end()) return api_error(404, "toxic not found");
    Json v;
    std::string err;
    if (!JsonParser(body).parse(v, &err)) return bad_body(err);
    if (v.kind != Json::Kind::object && v.kind != Json::Kind::null)
        return bad_body(
            value_type_error(v, "struct { Attributes interface {}; Toxicity float32 }"));
    Toxic t = *it;
    if (v.kind == Json::Kind::object) {
        const ToxicKind* kind = toxic_kind(t.type);
        Decoder d("ToxicWrapper");
        err = decode_attributes(field(v, "attributes"), *kind, t);
        if (!err.empty()) return bad_body(err);
        d.float32(v, "toxicity", t.toxicity);
        if (!d.error().empty()) return bad_body(d.error());
    }
    // New connections get the new values. Open ones keep the stage the old values gave them
    // (re-applying would stack, e.g. two latencies).
    auto c = std::make_shared<config::Proxy>(p.config());
    config::Rule* r = find_rule(*c, t.rule);
    if (r != nullptr) *r = to_rule(t);
    p.update_config(c);
    *it = t;
    return json_response(200, toxic_json(t));
}

HttpResponse ToxiproxyApi::delete_toxic(ProxyServer& p, const std::string& name) {
    std::vector<Toxic>& list = toxics(p);
    auto it =
        std::find_if(list.begin(), list.end(), [&](const Toxic& t) { return t.name == name; });
    if (it == list.end()) return api_error(404, "toxic not found");
    auto c = std::make_shared<config::Proxy>(p.config());
    std::string rule = it->rule;
    c->rules.erase(std::remove_if(c->rules.begin(), c->rules.end(),
                                  [&](const config::Rule& r) { return r.name == rule; }),
                   c->rules.end());
    p.update_config(c);
    list.erase(it);
    return no_content();
}

HttpResponse ToxiproxyApi::reset() {
    for (ProxyServer* p : hooks_.servers()) {
        std::vector<Toxic>& list = toxics(*p);
        bool down = !enabled(*p);
        if (list.empty() && !down) continue;
        std::set<std::string> rules;
        for (const Toxic& t : list) rules.insert(t.rule);
        auto c = std::make_shared<config::Proxy>(p->config());
        c->rules.erase(std::remove_if(c->rules.begin(), c->rules.end(),
                                      [&](const config::Rule& r) { return rules.count(r.name); }),
                       c->rules.end());
        if (config::Rule* r = find_rule(*c, kDisabledRule)) r->enabled = false;
        p->update_config(c);
        list.clear();
    }
    return no_content();
}

}  // namespace tcpfault
