#!/usr/bin/env bash
# The arm64 gateway package, installed as a gateway installs it: in a Debian
# bookworm arm64 root run under qemu-user through binfmt_misc, `dpkg -i`
# runs the package's maintainer scripts as arm64 code (the veil-edge user,
# /etc/veil, permissions), then the agent, as veil-edge, serves frames
# against a broker and both servers on the host (`veil demo --serve`), and
# `dpkg --purge` removes what the scripts made. In CI (.ci/run), after
# `tests/packages.sh arm`. Root, Debian.
#
#   tests/arm64-root.sh [DEB]   (default: target/debian/veil-edge-agent_*_arm64.deb,
#                                from `tests/packages.sh arm` after .ci/arm-smoke)
#
# The root holds only what the package and this test run: dpkg, the shell
# tools config/install.sh uses, passwd (the package's dependency), login
# (/etc/login.defs) and util-linux (setpriv), with their dependencies (57
# packages, 21 MB). Configuring a base system under emulation is what made
# a root cost 100-170 s (mmdebstrap --variant=essential: every essential
# package's maintainer scripts, and apt, run through qemu), so the host
# unpacks these packages and records them in the root's dpkg database as
# installed, as a base system's would be; dpkg in the root then installs
# base-passwd and passwd for real (their scripts make /etc/passwd,
# /etc/group, /etc/shadow and the shadow group), then the package.
#
# The packages come from the host apt's arm64 indexes (.ci/arm-smoke adds
# the architecture; added here when missing), resolved against an empty
# package database. qemu-aarch64-static is used when installed; otherwise
# only that binary is taken out of the qemu-user-static package (62 MB),
# which is not installed (that unpacks 379 MB). It is registered with
# binfmt_misc under a name of its own, with the F flag (the kernel opens it
# now, so it need not be in the root), and unregistered at the end; a newer
# entry takes precedence, so one the host already has is left as it was.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "arm64-root: needs root (chroot, binfmt_misc)" >&2; exit 1; }
debs=(target/debian/veil-edge-agent_*_arm64.deb)
DEB=$(realpath -m "${1:-${debs[0]}}")
[ -f "$DEB" ] || { echo "arm64-root: no arm64 package (tests/packages.sh arm)" >&2; exit 1; }
veil=${VEIL:-$ROOT/target/debug/veil}
[ -x "$veil" ] || { echo "arm64-root: no host veil at $veil (set VEIL)" >&2; exit 1; }
say() { echo "arm64-root: $*"; }
fail() { echo "arm64-root: FAIL: $*" >&2; exit 1; }

started=$(date +%s%N)
mark=$started
times=()
# lap NAME: the time since the last lap, for the breakdown at the end.
lap() {
    local now
    now=$(date +%s%N)
    times+=("$1 $(( (now - mark) / 100000000 ))")
    mark=$now
}
seconds() { printf '%d.%d s' $(($1 / 10)) $(($1 % 10)); }

W=$(mktemp -d /tmp/veil-arm64.XXXXXX)
R=$W/root
binfmt=/proc/sys/fs/binfmt_misc
entry="veil-arm64-root"
registered=0
serve_pid=
cleanup() {
    local rc=$?
    if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
    if mountpoint -q "$R/proc" 2>/dev/null; then umount "$R/proc"; fi
    if [ "$registered" = 1 ] && [ -e "$binfmt/$entry" ]; then echo -1 >"$binfmt/$entry"; fi
    if [ "$rc" != 0 ]; then for log in "$W"/*.log; do [ -e "$log" ] && { echo "== $log"; tail -20 "$log"; }; done; fi
    rm -rf "$W"
    exit $rc
}
trap cleanup EXIT

# The host's broker and servers start first: they come up while the root
# is made.
"$veil" demo --serve --listen 127.0.0.1:0 --state-dir "$W/demo" >"$W/serve.log" 2>&1 &
serve_pid=$!

# (Not `dpkg ... | grep -q`: grep's early exit fails the pipe under pipefail.)
if ! grep -qx arm64 <<<"$(dpkg --print-foreign-architectures)"; then
    say "adding the arm64 architecture to apt"
    dpkg --add-architecture arm64
    apt-get update -qq || true
fi
# The root's packages: passwd is the package's dependency; the others are
# what dpkg and its maintainer scripts run (dpkg checks for diff and find;
# base-passwd's postinst loads debconf, which is perl).
base=(dpkg dash bash coreutils sed grep diffutils findutils libc-bin util-linux
    base-files base-passwd passwd login perl-base)
: >"$W/no-packages"
mkdir -p "$W/debs/partial" "$W/apt"
# qemu-user-static meanwhile (62 MB, most of the download).
qemu=/usr/bin/qemu-aarch64-static
qemu_pid=
from=
if [ ! -x "$qemu" ]; then
    mkdir "$W/qemu"
    # tar stops at the binary, the data's fourth member, and so breaks
    # dpkg-deb's pipe.
    (cd "$W/qemu" && apt-get download -q -o APT::Sandbox::User=root qemu-user-static \
        && { dpkg-deb --fsys-tarfile qemu-user-static_*.deb || true; } \
        | tar -x --occurrence=1 ./usr/bin/qemu-aarch64-static) >"$W/qemu.log" 2>&1 &
    qemu_pid=$!
    qemu=$W/qemu/usr/bin/qemu-aarch64-static
    from=" and qemu-user-static"
fi
download_root() {
    apt-get -q -y --download-only --no-install-recommends \
        -o Dir::State::status="$W/no-packages" -o Dir::Cache="$W/apt" -o Dir::Cache::archives="$W/debs" \
        -o APT::Architecture=arm64 -o APT::Architectures=arm64 -o APT::Sandbox::User=root \
        install "${base[@]}" >>"$W/apt.log" 2>&1
}
# Once more after `apt-get update` when the arm64 index is missing or was
# caught mid-sync (.ci/arm-smoke tolerates that for its own packages).
if ! download_root; then
    say "the arm64 packages did not download (apt.log); updating apt's indexes and trying again"
    apt-get update -qq >>"$W/apt.log" 2>&1 || true
    download_root || fail "downloading the root's packages (see apt.log)"
fi
if [ -n "$qemu_pid" ]; then
    wait "$qemu_pid" || true
    [ -x "$qemu" ] || fail "taking qemu-aarch64-static from qemu-user-static (see qemu.log)"
fi
downloaded=$(find "$W" -maxdepth 2 -name '*.deb' -printf '%s\n' | awk '{ s += $1 } END { printf "%.1f", s / 1e6 }')
say "downloaded $(find "$W/debs" -name '*.deb' | wc -l) arm64 packages$from: $downloaded MB"
lap download

# Debian's qemu learns of the P flag (argv[0] preserved) from its name.
[ -e $binfmt/register ] || mount -t binfmt_misc binfmt_misc $binfmt
ln -s "$qemu" "$W/aarch64-binfmt-P"
aarch64_magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
aarch64_mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
[ ! -e "$binfmt/$entry" ] || echo -1 >"$binfmt/$entry"
echo ":$entry:M::$aarch64_magic:$aarch64_mask:$W/aarch64-binfmt-P:POF" >$binfmt/register
registered=1

# The root, unpacked on the host, merged /usr as bookworm's debootstrap
# makes it; every package but base-passwd and passwd recorded as installed.
# Documentation, manual pages and translations are left out, as in Debian's
# slim container images: 1,725 of the 2,907 files, 2 of the 6 s unpacking
# takes on a loaded 2-core machine.
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates" "$R/var/lib/dpkg/triggers"
for dir in bin sbin lib; do mkdir -p "$R/usr/$dir"; ln -s "usr/$dir" "$R/$dir"; done
: >"$R/var/lib/dpkg/status"
mkdir "$W/real"
field() { sed -n "s/^$1: //p" "$W/control"; }
for deb in "$W"/debs/*.deb; do
    dpkg-deb -f "$deb" >"$W/control"
    case $(field Architecture) in arm64|all) ;; *) fail "$(basename "$deb") is not arm64" ;; esac
    package=$(field Package)
    case $package in base-passwd|passwd) mv "$deb" "$W/real/"; continue ;; esac
    name=$package
    [ "$(field Multi-Arch)" != same ] || name=$package:arm64
    dpkg-deb --fsys-tarfile "$deb" | tar -xv --keep-directory-symlink -C "$R" \
        --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' --exclude='./usr/share/locale/*' \
        | sed -e 's|^\.||' -e 's|/$||' -e 's|^$|/.|' >"$R/var/lib/dpkg/info/$name.list"
    { sed '/^Package:/a Status: install ok installed' "$W/control"; echo; } >>"$R/var/lib/dpkg/status"
done
for node in null:1:3 zero:1:5 random:1:8 urandom:1:9; do
    IFS=: read -r dev major minor <<<"$node"
    mknod -m 0666 "$R/dev/$dev" c "$major" "$minor"
done
mv "$W/real" "$R/tmp/"
in_root() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin LC_ALL=C DEBIAN_FRONTEND=noninteractive "$@"; }
[ "$(in_root dpkg --print-architecture)" = arm64 ] || fail "the root is not arm64"
lap unpack
in_root sh -c 'dpkg --install /tmp/real/*.deb' >"$W/base.log" 2>&1 || fail "installing base-passwd and passwd in the root"
rm -rf "$R/tmp/real"
lap configure

# The package, with its maintainer scripts run as arm64 code.
cp "$DEB" "$R/tmp/"
in_root dpkg -i "/tmp/$(basename "$DEB")" >"$W/dpkg.log" 2>&1 || fail "dpkg -i in the root"
cat "$W/dpkg.log"
in_root getent passwd veil-edge >/dev/null || fail "no veil-edge user"
# Owners as the root's own users and groups name them.
expect_mode() {
    local got
    got=$(in_root stat -c '%U:%G %a' "$1")
    [ "$got" = "$2" ] || fail "$1 is $got, not $2"
}
expect_mode /etc/veil "root:veil 750"
expect_mode /etc/veil/secrets "root:veil 750"
expect_mode /etc/veil/edge-agent.toml "root:veil 640"
expect_mode /var/lib/veil/edge-agent "veil-edge:veil 700"
lap install

# The device's configuration put in place as config/README.md says, its
# state where the unit keeps it.
for _ in $(seq 1 600); do
    [ -f "$W/demo/edge-agent-devA.toml" ] && break
    kill -0 "$serve_pid" 2>/dev/null || fail "the host's servers stopped"
    sleep 0.5
done
[ -f "$W/demo/edge-agent-devA.toml" ] || fail "the host's servers did not come up"
lap "servers up"
sed 's|^state_dir = .*|state_dir = "/var/lib/veil/edge-agent"|' "$W/demo/edge-agent-devA.toml" >"$W/device.toml"
install -o root -g "$(in_root getent group veil | cut -d: -f3)" -m 0640 "$W/device.toml" "$R/etc/veil/edge-agent.toml"
frames=5
head -n $((frames + 1)) data/pima-test.csv >"$R/tmp/frames.csv"
chmod 0644 "$R/tmp/frames.csv"
mount -t proc proc "$R/proc"
say "the arm64 agent, as veil-edge in the root, against the host's servers"
# As the unit runs it: User=veil-edge, Group=veil, no PAM session.
timeout 600 chroot "$R" env -i PATH=/usr/sbin:/usr/bin VEIL_LOG=warn \
    setpriv --reuid=veil-edge --regid=veil --init-groups -- /usr/bin/veil-edge-agent \
    --config /etc/veil/edge-agent.toml --csv /tmp/frames.csv \
    --output /var/lib/veil/edge-agent/results.jsonl --wait-secs 300 >"$W/agent.log" 2>&1 || fail "the agent failed"
results=$(grep -c '"class"' "$R/var/lib/veil/edge-agent/results.jsonl" || true)
[ "$results" = "$frames" ] || fail "$results results for $frames frames"
head -n 2 "$R/var/lib/veil/edge-agent/results.jsonl"
umount "$R/proc"
lap serve

in_root dpkg --purge veil-edge-agent >"$W/purge.log" 2>&1 || fail "dpkg --purge in the root"
for path in /etc/veil /var/lib/veil /usr/bin/veil-edge-agent /lib/systemd/system/veil-edge-agent.service; do
    [ ! -e "$R$path" ] || fail "$path is left after dpkg --purge"
done
lap purge
breakdown=
for t in "${times[@]}"; do breakdown+="${breakdown:+, }${t% *} $(seconds "${t##* }")"; done
say "installed, served $frames frames as veil-edge and purged in an arm64 root in $(seconds $(( ($(date +%s%N) - started) / 100000000 ))) ($breakdown)"
