#!/usr/bin/env bash
# The single list of packages tcpfault needs, used by the README, CI and the Dockerfile.
#   install-deps.sh build   compiler and libraries
#   install-deps.sh test    build + what the test suites run against
#   install-deps.sh bench   build + the peers the benchmark compares with
#   install-deps.sh runtime only the shared libraries the binary loads
#   install-deps.sh image   what docker/build-image.sh needs to build the image without a Docker
#                           engine: podman (build --isolation chroot) and mmdebstrap (the base)
set -euo pipefail
what="${1:-test}"

# libnftables1 and the libraries it loads (the image check compares this list with ldd's).
runtime=(libuv1 libyaml-cpp0.7 libprometheus-cpp-core1.0 libre2-9 libstdc++6
         libnftables1 libmnl0 libnftnl11 libxtables12 libjansson4 libgmp10)
build=(build-essential cmake ninja-build pkg-config libuv1-dev libyaml-cpp-dev prometheus-cpp-dev doctest-dev
       libre2-dev nlohmann-json3-dev libnftables-dev libcap2-bin)
test=(python3 python3-pytest python3-pytest-timeout python3-yaml iproute2 procps tcpdump curl prometheus man-db
      python3-pyftpdlib vsftpd lftp swaks python3-aiosmtpd clang libclang-rt-14-dev python3-kubernetes
      chromium chromium-driver python3-selenium nftables)
bench=(iperf3 socat haproxy)
image=(podman mmdebstrap eatmydata gpg debian-archive-keyring)

case "$what" in
  runtime) pkgs=("${runtime[@]}") ;;
  build) pkgs=("${build[@]}") ;;
  test) pkgs=("${build[@]}" "${test[@]}") ;;
  bench) pkgs=("${build[@]}" "${bench[@]}") ;;
  image) pkgs=("${image[@]}") ;;
  *) echo "usage: $0 build|test|bench|runtime|image" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages for '$what' present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
