#!/usr/bin/env bash
# The Debian packages (config/deb/build.sh), built and checked in CI (.ci/run)
# from binaries CI has built anyway:
#
#   tests/packages.sh host   the amd64 packages from the test build
#                            (target/debug), checked, then installed on this
#                            throwaway machine: tests/deploy-recipe.sh
#                            --packages (root; it refuses a real installation)
#   tests/packages.sh arm    veil-edge-agent for arm64 and armhf from
#                            .ci/arm-smoke's cross build (target/cross/*/release)
#
# Checked in each package: architecture, files, conffiles, stripped binaries,
# and that every role package depends on the veil package of its version.
# Installs cargo-deb (and dpkg-dev, for cargo-deb's shared-library
# dependencies) when missing. tests/arm64-root.sh then installs the arm64
# package in a Debian arm64 root under qemu (config/README.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
mode=${1:-}
case $mode in host|arm) ;; *) echo "usage: tests/packages.sh host|arm" >&2; exit 2 ;; esac

started=$(date +%s)
if ! command -v dpkg-shlibdeps >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >/dev/null
fi
if ! command -v cargo-deb >/dev/null; then
    echo "packages: installing cargo-deb"
    # A version known to read the metadata as cli/Cargo.toml writes it.
    cargo install cargo-deb --version 3.8.0 --locked --quiet
fi
OUT=$ROOT/target/debian
rm -rf "$OUT"
if [ "$mode" = host ]; then
    config/deb/build.sh --out "$OUT" --fast --host-bin target/debug
else
    config/deb/build.sh --out "$OUT" --fast --no-host --cross-profile release aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
fi

fail() { echo "packages: FAIL: $*" >&2; exit 1; }
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# check DEB ARCH PATH... : the control data and the files a package must hold.
check() {
    local deb=$1 arch=$2 path
    shift 2
    [ -f "$deb" ] || fail "no $deb"
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$arch" ] || fail "$deb is not $arch"
    dpkg-deb --contents "$deb" | awk '{print $6}' | sed 's|^\.||' >"$W/contents"
    for path in "$@"; do grep -qx "$path" "$W/contents" || fail "$deb lacks $path"; done
    # Every file under /etc is a conffile, and only those.
    diff <(grep '^/etc/.*[^/]$' "$W/contents" | sort) \
        <(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles 2>/dev/null | sort) >/dev/null \
        || fail "$deb: the conffiles are not its files under /etc"
    echo "packages: $(basename "$deb"): $(du -k "$deb" | cut -f1) KB, Depends: $(dpkg-deb -f "$deb" Depends)"
}
# stripped DEB BIN MAX_BYTES
stripped() {
    dpkg-deb --fsys-tarfile "$1" | tar -xO "./usr/bin/$2" >"$W/$2"
    ! readelf -S "$W/$2" | grep -q '\.symtab' || fail "$1: $2 is not stripped"
    [ "$(stat -c %s "$W/$2")" -le "$3" ] || fail "$1: $2 is $(stat -c %s "$W/$2") bytes, over $3"
}
agent_files=(/usr/bin/veil-edge-agent /etc/veil/edge-agent.toml /lib/systemd/system/veil-edge-agent.service
    /lib/systemd/system/veil-edge-agent.socket /usr/share/veil-edge-agent/install.sh)

if [ "$mode" = host ]; then
    version=$(dpkg-deb -f "$OUT"/veil_*_amd64.deb Version)
    check "$OUT/veil_${version}_amd64.deb" amd64 /usr/bin/veil /usr/share/veil/models/pima-mlp.plan \
        /usr/share/veil/data/pima-test.csv /usr/share/veil/config/passwords /usr/share/veil/config/acl
    stripped "$OUT/veil_${version}_amd64.deb" veil 100000000
    for role in broker server-a server-b; do
        deb=$OUT/veil-${role}_${version}_amd64.deb
        files=("/lib/systemd/system/veil-$role.service" "/usr/share/veil-$role/install.sh")
        case $role in
            broker) files+=(/etc/veil/broker.toml /etc/veil/acl) ;;
            *) files+=("/etc/veil/$role.toml") ;;
        esac
        check "$deb" amd64 "${files[@]}"
        dpkg-deb -f "$deb" Depends | grep -q "veil (= $version)" \
            || fail "$deb depends on another version of veil than $version (cli/Cargo.toml)"
        ! dpkg-deb --contents "$deb" | grep -q '/usr/bin/' || fail "$deb holds a binary"
    done
    check "$OUT/veil-edge-agent_${version}_amd64.deb" amd64 "${agent_files[@]}"
    echo "packages: built and checked in $(( $(date +%s) - started )) s"
    tests/deploy-recipe.sh --packages "$OUT"
else
    for arch in arm64 armhf; do
        deb=$(ls "$OUT"/veil-edge-agent_*_"$arch".deb)
        check "$deb" "$arch" "${agent_files[@]}"
        # Linked statically: no shared library to depend on.
        [ "$(dpkg-deb -f "$deb" Depends)" = passwd ] || fail "$deb depends on $(dpkg-deb -f "$deb" Depends)"
        # What a gateway installs: at most 10 MB (issue 14).
        stripped "$deb" veil-edge-agent 10000000
    done
fi
echo "packages: $mode packages done in $(( $(date +%s) - started )) s"
