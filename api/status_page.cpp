#include "api/status_page.hpp"

#include <vector>

namespace tcpfault {

namespace {
std::string_view content_type_of(std::string_view name) {
    if (name.ends_with(".html")) return "text/html; charset=utf-8";
    if (name.ends_with(".css")) return "text/css; charset=utf-8";
    return "text/javascript; charset=utf-8";
}

const std::vector<StatusFile>& files() {
    static const std::vector<StatusFile> all = [] {
        std::vector<StatusFile> out;
        for (size_t i = 0; i < status_embedded::kFileCount; ++i) {
            const auto& f = status_embedded::kFiles[i];
            out.push_back({f.name, content_type_of(f.name),
                           std::string_view(reinterpret_cast<const char*>(f.data), f.size)});
        }
        return out;
    }();
    return all;
}
}  // namespace

const StatusFile* find_status_file(std::string_view name) {
    if (name.empty()) name = "index.html";
    for (const StatusFile& f : files())
        if (f.name == name) return &f;
    return nullptr;
}

}  // namespace tcpfault
