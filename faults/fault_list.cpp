#include "faults/fault_list.hpp"

#include <utility>

namespace tcpfault::faults {

namespace {
template <size_t... I>
std::vector<FaultKind> make_kinds(std::index_sequence<I...>) {
    std::vector<FaultKind> out;
    (out.push_back(FaultKind{std::variant_alternative_t<I, FaultSpec>::kName,
                             std::variant_alternative_t<I, FaultSpec>::kScope,
                             {std::variant_alternative_t<I, FaultSpec>::kParams.begin(),
                              std::variant_alternative_t<I, FaultSpec>::kParams.end()}}),
     ...);
    return out;
}

template <size_t... I>
std::optional<FaultSpec> parse_by_name(std::string_view name, const config::FaultParams& p,
                                       std::index_sequence<I...>) {
    std::optional<FaultSpec> out;
    auto try_one = [&]<size_t K>(std::integral_constant<size_t, K>) {
        using T = std::variant_alternative_t<K, FaultSpec>;
        if (out || T::kName != name) return;
        if (auto v = T::parse(p)) out = std::move(*v);
    };
    (try_one(std::integral_constant<size_t, I>{}), ...);
    return out;
}
}  // namespace

const std::vector<FaultKind>& fault_kinds() {
    static const std::vector<FaultKind> kinds =
        make_kinds(std::make_index_sequence<std::variant_size_v<FaultSpec>>{});
    return kinds;
}

std::optional<FaultSpec> parse_fault(std::string_view name, const config::FaultParams& p) {
    return parse_by_name(name, p, std::make_index_sequence<std::variant_size_v<FaultSpec>>{});
}

void apply_fault(const FaultSpec& f, Connection& c, const std::string& rule) {
    std::visit(
        [&](const auto& x) {
            using T = std::decay_t<decltype(x)>;
            if constexpr (T::kScope != Scope::proxy) x.apply(c, rule);
        },
        f);
}

}  // namespace tcpfault::faults
