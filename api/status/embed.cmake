# Writes OUT: a C++ source holding the status page's files (DIR/*.html, *.css, *.js) as byte
# arrays, so the binary serves them with no file on disk and no build step beyond CMake.
# Run by the root CMakeLists.txt whenever one of the files changes:
#   cmake -DDIR=api/status -DOUT=build/generated/status_files.cpp -P api/status/embed.cmake
file(GLOB files LIST_DIRECTORIES false RELATIVE ${DIR} ${DIR}/*.html ${DIR}/*.css ${DIR}/*.js)
list(SORT files)
if(NOT files)
  message(FATAL_ERROR "embed.cmake: no .html/.css/.js file in ${DIR}")
endif()
set(arrays "")
set(table "")
set(i 0)
foreach(f ${files})
  file(READ ${DIR}/${f} hex HEX)
  if(hex STREQUAL "")
    message(FATAL_ERROR "embed.cmake: ${DIR}/${f} is empty")
  endif()
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
  # 16 bytes a line
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" hex "${hex}")
  string(APPEND arrays "const unsigned char file${i}[] = {\n${hex}};\n")
  string(APPEND table "    {\"${f}\", file${i}, sizeof file${i}},\n")
  math(EXPR i "${i} + 1")
endforeach()
set(text "// Generated from api/status/ by api/status/embed.cmake at build time; do not edit.
#include \"api/status_page.hpp\"

namespace tcpfault::status_embedded {
namespace {
${arrays}}  // namespace

const File kFiles[] = {
${table}};
const size_t kFileCount = ${i};

}  // namespace tcpfault::status_embedded
")
file(WRITE ${OUT} "${text}")
