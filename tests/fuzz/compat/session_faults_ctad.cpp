// Fuzz tree only (see tests/fuzz/CMakeLists.txt): proxy/session_faults.cpp builds its fault
// visitor with `overloaded{...}`, which relies on C++20 class template argument deduction for
// aggregates (P1816). GCC has it; clang implements it only from version 17, so Debian 12's
// clang 14 rejects the file. Declaring the template and its deduction guide first, then
// including the unchanged source, compiles the very same code under clang 14.
namespace tcpfault {
namespace {
template <class... Ts>
struct overloaded;
template <class... Ts>
overloaded(Ts...) -> overloaded<Ts...>;
}  // namespace
}  // namespace tcpfault

#include "proxy/session_faults.cpp"  // NOLINT(bugprone-suspicious-include)
