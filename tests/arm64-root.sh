#!/usr/bin/env bash
# The arm64 gateway package, installed as a gateway installs it: a Debian
# bookworm arm64 root (mmdebstrap, the essential packages and passwd), run
# under qemu-user through binfmt_misc, where `dpkg -i` runs the package's
# maintainer scripts as arm64 code (the veil-edge user, /etc/veil,
# permissions), then the agent, as veil-edge, serves frames against a broker
# and both servers on the host (`veil demo --serve`), and `dpkg --purge`
# removes what the scripts made. Root, Debian; installs mmdebstrap and
# qemu-user-static when missing, registers qemu-aarch64 with binfmt_misc
# when it is not (and unregisters it at the end).
#
#   tests/arm64-root.sh [DEB]   (default: target/debian/veil-edge-agent_*_arm64.deb,
#                                from `tests/packages.sh arm` after .ci/arm-smoke)
#
# Not in CI: making the root takes 100-170 s (config/README.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "arm64-root: needs root (chroot, binfmt_misc)" >&2; exit 1; }
debs=(target/debian/veil-edge-agent_*_arm64.deb)
DEB=$(realpath -m "${1:-${debs[0]}}")
[ -f "$DEB" ] || { echo "arm64-root: no arm64 package (tests/packages.sh arm)" >&2; exit 1; }
started=$(date +%s)
say() { echo "arm64-root: $*"; }
fail() { echo "arm64-root: FAIL: $*" >&2; exit 1; }

if ! command -v mmdebstrap >/dev/null || ! [ -x /usr/bin/qemu-aarch64-static ]; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap qemu-user-static >/dev/null
fi
# binfmt_misc: with the F flag the kernel opens the static qemu now, so
# arm64 programs run inside the chroot without a copy of it there.
binfmt=/proc/sys/fs/binfmt_misc
registered=0
[ -e $binfmt/register ] || mount -t binfmt_misc binfmt_misc $binfmt
if [ ! -e $binfmt/qemu-aarch64 ]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf >$binfmt/register
    registered=1
fi

W=$(mktemp -d /tmp/veil-arm64.XXXXXX)
R=$W/root
serve_pid=
cleanup() {
    local rc=$?
    if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
    if mountpoint -q "$R/proc" 2>/dev/null; then umount "$R/proc"; fi
    if [ "$rc" != 0 ]; then for log in "$W"/*.log; do [ -e "$log" ] && { echo "== $log"; tail -20 "$log"; }; done; fi
    rm -rf "$W"
    if [ "$registered" = 1 ]; then echo -1 >$binfmt/qemu-aarch64; fi
    exit $rc
}
trap cleanup EXIT

# The mirror this machine's apt uses (deb822 or one-line sources).
mirror=$(awk '/^URIs:/ { u = $2 } /^Suites:/ && / bookworm( |$)/ { print u; exit } /^deb / && / bookworm / { print $2; exit }' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
say "bootstrapping a bookworm arm64 root from $mirror"
t0=$(date +%s)
mmdebstrap --quiet --variant=essential --include=passwd --arch=arm64 --skip=cleanup/apt/cache,essential/unlink \
    bookworm "$R" "$mirror" >"$W/mmdebstrap.log" 2>&1 || fail "mmdebstrap (see $W/mmdebstrap.log)"
downloaded=$(du -sm "$R/var/cache/apt/archives" | cut -f1)
rm -rf "$R"/var/cache/apt/archives/*.deb
say "root made in $(( $(date +%s) - t0 )) s, $downloaded MB of packages downloaded"
[ "$(chroot "$R" dpkg --print-architecture)" = arm64 ] || fail "the root is not arm64"

# The package, with its maintainer scripts run as arm64 code.
cp "$DEB" "$R/tmp/"
chroot "$R" dpkg -i "/tmp/$(basename "$DEB")" >"$W/dpkg.log" 2>&1 || fail "dpkg -i in the root"
cat "$W/dpkg.log"
chroot "$R" getent passwd veil-edge >/dev/null || fail "no veil-edge user"
# Owners as the root's own users and groups name them.
expect_mode() {
    local got
    got=$(chroot "$R" stat -c '%U:%G %a' "$1")
    [ "$got" = "$2" ] || fail "$1 is $got, not $2"
}
expect_mode /etc/veil "root:veil 750"
expect_mode /etc/veil/secrets "root:veil 750"
expect_mode /etc/veil/edge-agent.toml "root:veil 640"
expect_mode /var/lib/veil/edge-agent "veil-edge:veil 700"

# The host's broker and servers; the device's configuration put in place as
# config/README.md says, its state where the unit keeps it.
veil=${VEIL:-$ROOT/target/debug/veil}
[ -x "$veil" ] || fail "no host veil at $veil (set VEIL)"
"$veil" demo --serve --listen 127.0.0.1:0 --state-dir "$W/demo" >"$W/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 600); do
    [ -f "$W/demo/edge-agent-devA.toml" ] && break
    kill -0 "$serve_pid" 2>/dev/null || fail "the host's servers stopped"
    sleep 0.5
done
[ -f "$W/demo/edge-agent-devA.toml" ] || fail "the host's servers did not come up"
sed 's|^state_dir = .*|state_dir = "/var/lib/veil/edge-agent"|' "$W/demo/edge-agent-devA.toml" >"$W/device.toml"
install -o root -g "$(chroot "$R" getent group veil | cut -d: -f3)" -m 0640 "$W/device.toml" "$R/etc/veil/edge-agent.toml"
frames=5
head -n $((frames + 1)) data/pima-test.csv >"$R/tmp/frames.csv"
chmod 0644 "$R/tmp/frames.csv"
mount -t proc proc "$R/proc"
say "the arm64 agent, as veil-edge in the root, against the host's servers"
VEIL_LOG=warn timeout 600 chroot "$R" runuser -u veil-edge -- /usr/bin/veil-edge-agent \
    --config /etc/veil/edge-agent.toml --csv /tmp/frames.csv \
    --output /var/lib/veil/edge-agent/results.jsonl --wait-secs 300 >"$W/agent.log" 2>&1 || fail "the agent failed"
results=$(grep -c '"class"' "$R/var/lib/veil/edge-agent/results.jsonl" || true)
[ "$results" = "$frames" ] || fail "$results results for $frames frames"
head -n 2 "$R/var/lib/veil/edge-agent/results.jsonl"
umount "$R/proc"

chroot "$R" dpkg --purge veil-edge-agent >"$W/purge.log" 2>&1 || fail "dpkg --purge in the root"
for path in /etc/veil /var/lib/veil /usr/bin/veil-edge-agent /lib/systemd/system/veil-edge-agent.service; do
    [ ! -e "$R$path" ] || fail "$path is left after dpkg --purge"
done
say "installed, served $frames frames as veil-edge and purged in an arm64 root; $(( $(date +%s) - started )) s in all"
