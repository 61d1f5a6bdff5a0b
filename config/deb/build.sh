#!/usr/bin/env bash
# Builds veil's Debian packages with cargo-deb from binaries already built
# (it never compiles): the metadata is in cli/Cargo.toml (veil, veil-broker,
# veil-server-a, veil-server-b) and edge-agent/Cargo.toml (veil-edge-agent).
#
#   config/deb/build.sh [--out DIR] [--host-bin DIR | --no-host] [--cross-profile NAME] [--fast] [TRIPLE...]
#
# Host packages (unless --no-host): all five, from target/dist/ (`cargo build --profile dist
# --locked -p veil -p veil-edge-agent`), or from --host-bin DIR (CI: the
# test build's target/debug; cargo-deb strips them either way).
# TRIPLE (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf):
# veil-edge-agent alone, from target/cross/TRIPLE/PROFILE/ (the cross build
# of config/README.md; PROFILE is --cross-profile, default dist; .ci/arm-smoke
# builds `release`), stripped with Debian's TRIPLE strip.
# --fast: quicker, larger compression (CI). Writes DIR/*.deb (default
# target/debian) and prints their names.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

OUT=$ROOT/target/debian
HOST_BIN=
HOST=1
CROSS_PROFILE=dist
FAST=()
TRIPLES=()
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$(realpath -m "$2"); shift 2 ;;
        --host-bin) HOST_BIN=$(realpath "$2"); shift 2 ;;
        --no-host) HOST=0; shift ;;
        --fast) FAST=(--fast); shift ;;
        --cross-profile) CROSS_PROFILE=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) TRIPLES+=("$1"); shift ;;
    esac
done
command -v cargo-deb >/dev/null || { echo "build.sh: needs cargo-deb (cargo install cargo-deb --locked)" >&2; exit 1; }
mkdir -p "$OUT"
deb() { cargo deb --no-build --locked "${FAST[@]}" --output "$OUT" "$@" | tail -n 1; }

# cargo-deb takes binaries from <target dir>/<profile>/ and refuses the dev
# profile: another build's binaries are linked into a target dir of their own
# under the name `release`.
stage=$ROOT/target/deb-input
if [ -n "$HOST_BIN" ]; then
    mkdir -p "$stage/release"
    for bin in veil veil-edge-agent; do
        [ -x "$HOST_BIN/$bin" ] || { echo "build.sh: no $HOST_BIN/$bin" >&2; exit 1; }
        ln -f "$HOST_BIN/$bin" "$stage/release/$bin" 2>/dev/null || cp "$HOST_BIN/$bin" "$stage/release/$bin"
    done
fi
host_deb() {
    if [ -n "$HOST_BIN" ]; then
        CARGO_TARGET_DIR=$stage deb --profile release "$@"
    else
        deb --profile dist "$@"
    fi
}
if [ "$HOST" = 1 ]; then
    host_deb -p veil
    for role in broker server-a server-b; do host_deb -p veil --variant "$role"; done
    host_deb -p veil-edge-agent
fi

for triple in "${TRIPLES[@]}"; do
    [ -x "target/cross/$triple/$CROSS_PROFILE/veil-edge-agent" ] \
        || { echo "build.sh: no target/cross/$triple/$CROSS_PROFILE/veil-edge-agent" >&2; exit 1; }
    CARGO_TARGET_DIR=$ROOT/target/cross deb -p veil-edge-agent --target "$triple" --profile "$CROSS_PROFILE"
done
