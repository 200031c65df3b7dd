#!/usr/bin/env bash
# Builds the tcpfault image from docker/Dockerfile without a Docker engine: podman (buildah) with
# --isolation chroot, FROM a Debian 12 base made here with mmdebstrap instead of pulled from a
# registry. CI runs it through tests/image/check-image.py; anyone with podman can use it.
#
#   bash docker/build-image.sh [TAG]          # default localhost/tcpfault:latest; as root
#
# 1. docker/install-deps.sh image (podman, mmdebstrap).
# 2. The base: `mmdebstrap --variant=minbase bookworm`, made the way Debian's official
#    debian:12-slim is (merged /usr, no docs/man pages/locales, the official images' apt and dpkg
#    settings), kept as a tarball in $TCPFAULT_IMAGE_CACHE (default ~/.cache/tcpfault/image) and
#    remade when older than $BASE_MAX_AGE_DAYS (7) or when this recipe changes.
# 3. `podman import` of that tarball, tagged debian:12 and debian:12-slim (the Dockerfile's two
#    FROMs; both stand for the slim variant here, the build stage only runs apt in it). Skipped
#    when the store already holds this very tarball, so podman's layer cache keeps working
#    between local runs (the build stage's package layer is then reused).
# 4. `podman build --isolation chroot --format docker --pull=never` with the Dockerfile's own
#    ignore file, so a COPY of a file the ignore file drops fails here as it would with BuildKit.
#
# Prints the time of each phase. Images left untagged by older builds of this script are removed
# afterwards (only those: the images it builds are labelled org.tcpfault.build-image).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$(cd "$here/.." && pwd)"
tag="${1:-localhost/tcpfault:latest}"
cache="${TCPFAULT_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tcpfault/image}"
max_age_days="${BASE_MAX_AGE_DAYS:-7}"
label="org.tcpfault.build-image=1"
build_tag="localhost/tcpfault-build-stage:latest"

t0=$SECONDS
phase() { printf '=== build-image: %s (%ds so far)\n' "$*" $((SECONDS - t0)); }

phase "dependencies"
bash "$here/install-deps.sh" image
mkdir -p "$cache"

# --- 2. the base tarball -------------------------------------------------------------------------
# What Debian's official images (debuerreotype) set up, so the Dockerfile runs as it does on
# docker.io's debian:12-slim: slim's dpkg path excludes (mmdebstrap writes --dpkgopt into
# /etc/dpkg/dpkg.cfg.d/, so later installs in the image skip docs too), and docker's apt tweaks.
slim_opts=(
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/groff/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*'
    --dpkgopt='path-exclude=/usr/share/linda/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
)
tweaks="$cache/tweaks"
mkdir -p "$tweaks"
cat >"$tweaks/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$tweaks/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$tweaks/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$tweaks/docker-autoremove-suggests"
echo 'force-unsafe-io' >"$tweaks/docker-apt-speedup"
hooks=/usr/share/mmdebstrap/hooks
mmdebstrap_args=(
    --variant=minbase
    # merged /usr without the usrmerge package (and the perl it pulls in), as the official image
    --hook-dir="$hooks/merged-usr"
    # dpkg without fsync while the base is made: about a quarter faster
    --hook-dir="$hooks/eatmydata"
    "${slim_opts[@]}"
    --customize-hook="upload $tweaks/docker-clean /etc/apt/apt.conf.d/docker-clean"
    --customize-hook="upload $tweaks/docker-no-languages /etc/apt/apt.conf.d/docker-no-languages"
    --customize-hook="upload $tweaks/docker-gzip-indexes /etc/apt/apt.conf.d/docker-gzip-indexes"
    --customize-hook="upload $tweaks/docker-autoremove-suggests /etc/apt/apt.conf.d/docker-autoremove-suggests"
    --customize-hook="upload $tweaks/docker-apt-speedup /etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    # With docker-clean in place mmdebstrap's own cleanup no longer finds apt's binary caches.
    --customize-hook='rm -f "$1"/var/cache/apt/*.bin'
    bookworm
)
base="$cache/debian-12-base.tar"
recipe="$( (printf '%s\n' "${mmdebstrap_args[@]}"; cat "$tweaks"/*) | sha256sum | cut -d' ' -f1)"
if [ -s "$base" ] && [ "$(cat "$base.recipe" 2>/dev/null)" = "$recipe" ] &&
    [ -z "$(find "$base" -mtime +"$max_age_days")" ]; then
    phase "base: reusing $base (made $(date -r "$base" '+%F %T'))"
else
    phase "base: mmdebstrap ${mmdebstrap_args[*]:0:1} bookworm -> $base"
    rm -f "$base" "$base.recipe" "$base.id"
    # The output format follows the name's extension: the partial file must end in .tar too.
    tmp="$cache/partial-base.tar"
    if ! mmdebstrap -q "${mmdebstrap_args[@]}" "$tmp" >"$cache/mmdebstrap.log" 2>&1; then
        tail -n 40 "$cache/mmdebstrap.log" >&2
        echo "build-image: mmdebstrap failed (log: $cache/mmdebstrap.log)" >&2
        rm -rf "$tmp"
        exit 1
    fi
    mv "$tmp" "$base"
    echo "$recipe" >"$base.recipe"
fi

# --- 3. import as debian:12 and debian:12-slim ---------------------------------------------------
want_id="$(cat "$base.id" 2>/dev/null || true)"
have_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
if [ -n "$want_id" ] && [ "$(have_id docker.io/library/debian:12)" = "$want_id" ] &&
    [ "$(have_id docker.io/library/debian:12-slim)" = "$want_id" ]; then
    phase "base: already imported as debian:12 and debian:12-slim"
else
    phase "base: podman import as debian:12 and debian:12-slim"
    id="$(podman import --quiet "$base" docker.io/library/debian:12)"
    podman tag "$id" docker.io/library/debian:12-slim
    podman image inspect --format '{{.Id}}' "$id" >"$base.id"
fi

# --- 4. the build --------------------------------------------------------------------------------
# The build stage is tagged too (first build, --target build): it keeps that stage's layers, the
# package install above all, out of the prune below, so the next local build reuses them.
log="$cache/build.log"
: >"$log"
build() {  # podman build args...; each log line starts with the seconds since this script started
    (cd "$src" && podman build --isolation chroot --format docker --pull=never \
        --label "$label" --ignorefile docker/Dockerfile.dockerignore -f docker/Dockerfile \
        "$@" . 2>&1) |
        while IFS= read -r line; do printf '%4d %s\n' $((SECONDS - t0)) "$line"; done >>"$log"
}
phase "podman build --target build -t $build_tag"
if ! build --target build -t "$build_tag" || ! { phase "podman build -t $tag" && build -t "$tag"; }
then
    tail -n 60 "$log" >&2
    echo "build-image: podman build failed (log: $log)" >&2
    exit 1
fi
grep -E '^ *[0-9]+ (\[[0-9]+/[0-9]+\] STEP|STEP|install-deps:|=== build-steps)' "$log" || true
# Untagged leaves of earlier builds by this script (an older build stage, an older image); the
# layers the two tags above use stay.
podman image prune --force --filter "label=$label" >/dev/null 2>&1 || true
phase "done: $tag ($(podman image inspect --format '{{.Size}}' "$tag") bytes)"
