#!/usr/bin/env bash
# Installs dependencies, builds tcpfault and runs it on examples/demo.yaml in front of a
# throw-away web server, so you can poke at it with curl. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash docker/install-deps.sh build
command -v python3 >/dev/null || bash -c 'apt-get install -y -qq python3'
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
demo_root=$(mktemp -d)
echo "hello through tcpfault" > "$demo_root/index.html"
head -c 10485760 /dev/urandom > "$demo_root/10MiB.bin"
python3 -m http.server 8000 --bind 127.0.0.1 --directory "$demo_root" >/dev/null 2>&1 &
web=$!
trap 'kill $web 2>/dev/null; rm -rf "$demo_root"' EXIT
cat <<MSG

  web server : http://127.0.0.1:8000 (direct)
  tcpfault   : http://127.0.0.1:8080 -> 127.0.0.1:8000   (config: examples/demo.yaml)

  Try, in another terminal:
    for i in 1 2 3 4 5 6; do curl -sS -o /dev/null -w '%{http_code} %{time_total}s\n' http://127.0.0.1:8080/; done
        # connections 3 and 6: "curl: (56) Recv failure: Connection reset by peer";
        # the others succeed, each about 200ms slower than direct (rule "slow")
    curl -s http://127.0.0.1:8080/10MiB.bin | sha256sum   # same bytes as:
    curl -s http://127.0.0.1:8000/10MiB.bin | sha256sum
  Ctrl-C here stops tcpfault (graceful stop) and the web server.

MSG
./build/tcpfault -c examples/demo.yaml
