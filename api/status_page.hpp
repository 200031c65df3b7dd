// The status page served at the admin root `/`: plain HTML, CSS and JavaScript (api/status/),
// embedded into the binary at build time by api/status/embed.cmake, so it works offline, from
// any install, with no build step of its own. The page reads the admin API and acts through it
// (docs/status-page.md).
#pragma once

#include <cstddef>
#include <string_view>

namespace tcpfault {

struct StatusFile {
    std::string_view name;  // "index.html", "status.js", ...
    std::string_view content_type;
    std::string_view body;
};

// "" is the page itself (index.html); any other name is a file of api/status/ by its name
// ("status.js"). Null for anything else.
const StatusFile* find_status_file(std::string_view name);

namespace status_embedded {
// Defined in the generated source (build/generated/status_files.cpp).
struct File {
    const char* name;
    const unsigned char* data;
    size_t size;
};
extern const File kFiles[];
extern const size_t kFileCount;
}  // namespace status_embedded

}  // namespace tcpfault
