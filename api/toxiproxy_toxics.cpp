#include "api/toxiproxy_toxics.hpp"

#include <algorithm>
#include <limits>

#include "api/http_parser.hpp"
#include "config/units.hpp"

namespace tcpfault::toxiproxy {

namespace {

constexpr int64_t kMaxMs = config::kMaxDuration.count() / 1000;
constexpr int64_t kMaxUs = config::kMaxDuration.count();
// Slices larger than this are no slicing at all; the bound keeps avg + var far from overflow.
constexpr int64_t kMaxSliceSize = int64_t{1} << 40;
// KB/s whose bytes per second still fit.
constexpr int64_t kMaxRate = std::numeric_limits<int64_t>::max() / 1000;

config::Duration ms(int64_t v) {
    return config::Duration{v * 1000};
}

// "" when every named attribute is within [0, max].
std::string in_range(const Toxic& t, std::initializer_list<const char*> fields, int64_t max,
                     const char* unit) {
    for (const char* f : fields) {
        int64_t v = t.attr(f);
        if (v < 0) return std::string(f) + " must not be negative, found " + std::to_string(v);
        if (v > max)
            return std::string(f) + " is too large: " + std::to_string(v) + " (at most " +
                   std::to_string(max) + unit + ")";
    }
    return "";
}

config::Rule rule_of(config::FaultSpec fault) {
    config::Rule r;
    r.fault = std::move(fault);
    return r;
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

// --- latency {latency, jitter} (ms) ---------------------------------------------------------
std::string check_latency(const Toxic& t) {
    return in_range(t, {"latency", "jitter"}, kMaxMs, " ms");
}
std::vector<config::Rule> latency_rules(const Toxic& t) {
    config::LatencyFault f;
    f.delay = ms(t.attr("latency"));
    f.jitter = ms(t.attr("jitter"));
    f.direction = t.direction();
    return {rule_of(f)};
}

// --- bandwidth {rate} (KB/s, 1 KB = 1000 bytes: Toxiproxy sleeps len/rate ms per chunk) ------
std::string check_bandwidth(const Toxic& t) {
    return in_range(t, {"rate"}, kMaxRate, " KB/s");
}
std::vector<config::Rule> bandwidth_rules(const Toxic& t) {
    int64_t rate = t.attr("rate");
    if (rate == 0) {
        // Toxiproxy then lets nothing through (and does not read): a stall that holds.
        config::StallFault f;
        f.direction = t.direction();
        f.mode = config::StallFault::Mode::hold;
        return {rule_of(f)};
    }
    config::BandwidthFault f;
    f.rate = static_cast<uint64_t>(rate) * 1000;
    f.direction = t.direction();
    return {rule_of(f)};
}

// --- slow_close {delay} (ms) ------------------------------------------------------------------
std::string check_slow_close(const Toxic& t) {
    return in_range(t, {"delay"}, kMaxMs, " ms");
}
std::vector<config::Rule> slow_close_rules(const Toxic& t) {
    config::SlowCloseFault f;
    f.delay = ms(t.attr("delay"));
    f.direction = t.direction();
    return {rule_of(f)};
}

// --- timeout {timeout} (ms; 0: never closes) --------------------------------------------------
// Toxiproxy drops every chunk of the stream and closes the connection once `timeout` passed
// without one (its timer restarts on each chunk it drops); the stream's own close (FIN or RST)
// still ends the connection. Here: a drop stall that lets that close through, and an idle
// timeout that closes. The idle countdown restarts on bytes of either stream (tcpfault's idle
// fault watches the connection, not one stream).
std::string check_timeout(const Toxic& t) {
    return in_range(t, {"timeout"}, kMaxMs, " ms");
}
std::vector<config::Rule> timeout_rules(const Toxic& t) {
    config::StallFault drop;
    drop.direction = t.direction();
    drop.mode = config::StallFault::Mode::drop;
    drop.pass_close = true;
    std::vector<config::Rule> rules{rule_of(drop)};
    if (t.attr("timeout") > 0) {
        config::IdleFault idle;
        idle.timeout = ms(t.attr("timeout"));
        idle.action = config::IdleFault::Action::close;
        rules.push_back(rule_of(idle));
        rules.back().name = "idle";
    }
    return rules;
}

// --- reset_peer {timeout} (ms) ----------------------------------------------------------------
// Toxiproxy waits for the stream's first data, swallows it, waits `timeout`, then resets.
// `data: ""` matches at the first byte that comes (on an open connection: the next one);
// after_bytes 0 holds the stream right there until `after` has passed; the reset without flush
// discards what was held.
std::string check_reset_peer(const Toxic& t) {
    return in_range(t, {"timeout"}, kMaxMs, " ms");
}
std::vector<config::Rule> reset_peer_rules(const Toxic& t) {
    config::ResetFault f;
    f.to = config::Target::both;
    f.flush = false;
    config::Rule r = rule_of(f);
    r.when = first_data(t.direction());
    if (t.attr("timeout") > 0) r.when->after = ms(t.attr("timeout"));
    return {r};
}

// --- slicer {average_size, size_variation, delay (µs)} ----------------------------------------
std::string check_slicer(const Toxic& t) {
    std::string e = in_range(t, {"average_size", "size_variation"}, kMaxSliceSize, " bytes");
    return e.empty() ? in_range(t, {"delay"}, kMaxUs, " µs") : e;
}
std::vector<config::Rule> slicer_rules(const Toxic& t) {
    int64_t avg = t.attr("average_size");
    int64_t var = t.attr("size_variation");
    config::SliceFault f;
    f.min_size = static_cast<uint64_t>(std::max<int64_t>(1, avg - var));
    f.max_size = std::max(f.min_size, static_cast<uint64_t>(avg + var));
    f.delay = config::Duration{t.attr("delay")};
    f.direction = t.direction();
    return {rule_of(f)};
}

// --- limit_data {bytes} -----------------------------------------------------------------------
// Counted from the first data after the toxic is added, as Toxiproxy's per-link state is;
// `bytes: 0` closes at the first data, which is not passed on.
std::string check_limit_data(const Toxic& t) {
    return in_range(t, {"bytes"}, std::numeric_limits<int64_t>::max(), " bytes");
}
std::vector<config::Rule> limit_data_rules(const Toxic& t) {
    config::CloseFault f;
    f.to = config::Target::both;
    f.then = config::CloseFault::Then::reset;
    config::Rule r = rule_of(f);
    r.when = first_data(t.direction());
    r.when->after_bytes = static_cast<uint64_t>(t.attr("bytes"));
    return {r};
}

// --- noop {} ----------------------------------------------------------------------------------
// A rule that does nothing, so the toxic is still an ordinary rule.
std::string check_noop(const Toxic&) {
    return "";
}
std::vector<config::Rule> noop_rules(const Toxic& t) {
    config::LatencyFault f;
    f.direction = t.direction();
    return {rule_of(f)};
}

const std::vector<ToxicType>& types() {
    static const std::vector<ToxicType> all = {
        {"latency", {"latency", "jitter"}, check_latency, latency_rules},
        {"bandwidth", {"rate"}, check_bandwidth, bandwidth_rules},
        {"slow_close", {"delay"}, check_slow_close, slow_close_rules},
        {"timeout", {"timeout"}, check_timeout, timeout_rules},
        {"reset_peer", {"timeout"}, check_reset_peer, reset_peer_rules},
        {"slicer", {"average_size", "size_variation", "delay"}, check_slicer, slicer_rules},
        {"limit_data", {"bytes"}, check_limit_data, limit_data_rules},
        {"noop", {}, check_noop, noop_rules},
    };
    return all;
}

}  // namespace

int64_t Toxic::attr(std::string_view f) const {
    for (const auto& [k, v] : attributes)
        if (k == f) return v;
    return 0;
}

const ToxicType* toxic_type(std::string_view name) {
    for (const auto& t : types())
        if (name == t.name) return &t;
    return nullptr;
}

std::string decode_toxic(const Json& body, Toxic& t) {
    t.stream = "downstream";
    t.toxicity = 1.0;
    if (!body.is_object() && !body.is_null())
        return "bad request body: expected a toxic object, found " + kind_of(body);
    for (std::string e :
         {read_string(body, "name", t.name), read_string(body, "type", t.type),
          read_string(body, "stream", t.stream), read_number(body, "toxicity", t.toxicity)}) {
        if (!e.empty()) return "bad request body: " + e;
    }
    if (const Json* a = field(body, "attributes"); a != nullptr && !a->is_object())
        return "bad request body: attributes: expected an object, found " + kind_of(*a);
    if (ascii_iequals(t.stream, "upstream"))
        t.upstream = true;
    else if (ascii_iequals(t.stream, "downstream"))
        t.upstream = false;
    else
        return "stream was invalid, can be either upstream or downstream";
    if (t.name.empty()) t.name = t.type + "_" + t.stream;
    const ToxicType* type = toxic_type(t.type);
    if (type == nullptr) return "invalid toxic type";
    t.attributes.clear();
    for (const char* f : type->attributes) t.attributes.emplace_back(f, 0);
    return "";
}

std::string decode_attributes(const Json* attrs, Toxic& t) {
    if (attrs == nullptr) return "";
    if (!attrs->is_object())
        return "bad request body: attributes: expected an object, found " + kind_of(*attrs);
    for (auto& [name, value] : t.attributes) {
        std::string e = read_int(*attrs, name, value, "attributes.");
        if (!e.empty()) return "bad request body: " + e;
    }
    return "";
}

std::string check_toxic(const Toxic& t) {
    if (!(t.toxicity >= 0.0 && t.toxicity <= 1.0))
        return "toxicity must be between 0 and 1, found " + dump(go_number(t.toxicity));
    const ToxicType* type = toxic_type(t.type);
    if (type == nullptr) return "invalid toxic type";
    std::string e = type->check(t);
    return e.empty() ? "" : t.type + " toxic: " + e;
}

std::vector<config::Rule> to_rules(const Toxic& t) {
    const ToxicType* type = toxic_type(t.type);
    std::vector<config::Rule> rules = type != nullptr ? type->rules(t) : noop_rules(t);
    for (auto& r : rules) {
        r.name = r.name.empty() ? t.rule : t.rule + "-" + r.name;
        r.enabled = true;
        r.match.existing = true;  // toxics act on open connections too
        if (t.toxicity < 1.0) r.match.probability = std::max(0.0, t.toxicity);
    }
    return rules;
}

std::vector<std::string> rule_names(const Toxic& t) {
    std::vector<std::string> out;
    for (const auto& r : to_rules(t)) out.push_back(r.name);
    return out;
}

Json toxic_json(const Toxic& t) {
    Json attrs = Json::object();
    for (const auto& [k, v] : t.attributes) attrs[k] = v;
    return Json{{"attributes", std::move(attrs)},
                {"name", t.name},
                {"type", t.type},
                {"stream", t.stream},
                {"toxicity", go_number(t.toxicity)}};
}

}  // namespace tcpfault::toxiproxy
