#!/usr/bin/env bash
# The deployment recipe of config/README.md, tested as written: as root,
# config/install.sh puts every role on this host (users, /etc/veil, keys,
# broker accounts, a provisioned device), then each service's user must
# read exactly its own files, and the roles, started as those users from
# the installed files, must serve frames, and `veil demo`, run from /, must
# find its models and data where they were installed. CI runs it (.ci/run);
# it changes the system it runs on, so it refuses to run where /etc/veil
# exists.
#
#   tests/deploy-recipe.sh [BIN_DIR]          config/install.sh with the
#                                             binaries in BIN_DIR (default
#                                             target/debug)
#   tests/deploy-recipe.sh --packages DIR     the same recipe from the amd64
#                                             packages in DIR (dpkg -i; the
#                                             maintainer scripts run install.sh
#                                             --packaged), then dpkg --purge
#
# KEEP=1 leaves the installation in place; otherwise everything it made
# (users, group, /etc/veil, /var/lib/veil, /usr/share/veil, binaries,
# units, packages) is removed at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEBS=
if [ "${1:-}" = --packages ]; then
    DEBS=$(realpath "$2")
    PREFIX=/usr/bin
else
    BIN=$(realpath "${1:-$ROOT/target/debug}")
    PREFIX=/usr/local/bin
fi
PACKAGES=(veil-edge-agent veil-server-a veil-server-b veil-broker veil)
[ "$(id -u)" = 0 ] || { echo "deploy-recipe: needs root (it creates users)" >&2; exit 1; }
for path in /etc/veil /var/lib/veil /usr/share/veil /usr/local/bin/veil /usr/bin/veil; do
    [ ! -e "$path" ] || { echo "deploy-recipe: $path exists; refusing to touch a real installation" >&2; exit 1; }
done
# Not the shipped 1883: a Mosquitto installed from the distribution may
# be listening there. Changing the port is the one edit made to the
# installed configs.
PORT=${PORT:-18893}
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then
    echo "deploy-recipe: port $PORT is taken (set PORT)" >&2
    exit 1
fi
W=$(mktemp -d /tmp/veil-deploy.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$rc" != 0 ]; then
        for log in "$W"/*.log; do [ -e "$log" ] && { echo "== $log"; tail -20 "$log"; }; done
    fi
    if [ "${KEEP:-0}" != 1 ]; then
        if [ -n "$DEBS" ]; then dpkg --purge "${PACKAGES[@]}" >/dev/null 2>&1 || true; fi
        for u in veil-broker veil-server-a veil-server-b veil-edge; do userdel "$u" 2>/dev/null || true; done
        groupdel veil 2>/dev/null || true
        rm -rf /etc/veil /var/lib/veil /usr/share/veil /usr/local/bin/veil /usr/local/bin/veil-edge-agent \
            /etc/systemd/system/veil-*.service /etc/systemd/system/veil-edge-agent.socket "$W"
    fi
    exit $rc
}
trap cleanup EXIT
fail() { echo "deploy-recipe: FAIL: $*" >&2; exit 1; }
deb_of() { ls "$DEBS/$1"_*_amd64.deb; }
install_servers() {
    if [ -n "$DEBS" ]; then
        # dpkg configures them in this order: the servers' accounts wait in
        # /etc/veil/secrets/*.account until the broker's postinst adds them.
        dpkg -i "$(deb_of veil)" "$(deb_of veil-server-a)" "$(deb_of veil-server-b)" "$(deb_of veil-broker)"
    else
        "$ROOT/config/install.sh" --bin "$BIN" --no-systemd broker server-a server-b
    fi
}

install_servers
sed -i "s|^listen = .*|listen = \"127.0.0.1:$PORT\"|" /etc/veil/broker.toml
sed -i "s|^url = .*|url = \"mqtt://127.0.0.1:$PORT\"|" /etc/veil/server-a.toml /etc/veil/server-b.toml
# The device is provisioned where the broker's password file is, as
# config/README.md shows, then installed on "its" host (here the same).
$PREFIX/veil provision device gw-deploy --a-key /etc/veil/keys/server-a.pub \
    --b-key /etc/veil/keys/server-b.pub --model /usr/share/veil/models/pima-mlp.plan \
    --broker-url mqtt://127.0.0.1:$PORT --out "$W/gw-deploy" \
    --password-file /etc/veil/passwords --acl /etc/veil/acl >"$W/provision.log"
if [ -n "$DEBS" ]; then
    # As config/README.md tells the operator: the package, then the
    # device's two files in place of the example.
    dpkg -i "$(deb_of veil-edge-agent)"
    install -o root -g veil -m 0640 "$W"/gw-deploy/edge-agent-gw-deploy.toml /etc/veil/edge-agent.toml
    install -o veil-edge -g veil -m 0600 "$W"/gw-deploy/gw-deploy.password /etc/veil/secrets/device.password
else
    "$ROOT/config/install.sh" --bin "$BIN" --no-systemd --device-dir "$W/gw-deploy" edge-agent
fi
# Running it again changes nothing and keeps every secret.
before=$(sha256sum /etc/veil/keys/*.key /etc/veil/secrets/* /etc/veil/passwords)
install_servers >/dev/null
[ "$before" = "$(sha256sum /etc/veil/keys/*.key /etc/veil/secrets/* /etc/veil/passwords)" ] \
    || fail "a second install changed a key or password"
if [ -n "$DEBS" ]; then
    for bin in veil veil-edge-agent; do
        ! readelf -S "/usr/bin/$bin" | grep -q '\.symtab' || fail "/usr/bin/$bin is not stripped"
    done
    for unit in veil-broker.service veil-server-a.service veil-server-b.service veil-edge-agent.service \
        veil-edge-agent.socket; do
        [ -f "/lib/systemd/system/$unit" ] || fail "no /lib/systemd/system/$unit"
        if ls /etc/systemd/system/*.wants/"$unit" >/dev/null 2>&1; then fail "$unit is enabled"; fi
    done
fi

# Who may read what.
can() { runuser -u "$1" -- test -r "$2"; }
expect_read() { can "$1" "$2" || fail "$1 cannot read $2"; }
expect_no_read() { ! can "$1" "$2" || fail "$1 can read $2"; }
for f in broker.toml acl passwords; do expect_read veil-broker "/etc/veil/$f"; done
for role in server-a server-b; do
    user=veil-$role
    for f in "$role.toml" "keys/$role.key" "secrets/$role.password"; do expect_read "$user" "/etc/veil/$f"; done
    expect_no_read "$user" /etc/veil/passwords
    expect_no_read "$user" /etc/veil/secrets/device.password
    for user in veil-broker veil-edge; do
        expect_no_read "$user" "/etc/veil/keys/$role.key"
        expect_no_read "$user" "/etc/veil/secrets/$role.password"
    done
done
expect_no_read veil-server-a /etc/veil/keys/server-b.key
expect_no_read veil-server-b /etc/veil/keys/server-a.key
expect_read veil-server-a /etc/veil/keys/server-b.pub
expect_read veil-server-b /etc/veil/pima-mlp.topology
expect_read veil-edge /etc/veil/edge-agent.toml
expect_read veil-edge /etc/veil/secrets/device.password
expect_no_read veil-edge /etc/veil/passwords
for path in /etc/veil/keys/server-a.key /etc/veil/keys/server-b.key /etc/veil/secrets/server-a.password \
    /etc/veil/secrets/server-b.password /etc/veil/secrets/device.password /etc/veil/passwords; do
    [ "$(stat -c %a "$path")" = 600 ] || fail "$path has mode $(stat -c %a "$path")"
done
echo "deploy-recipe: permissions as documented"

# The roles, each as its own user, from the installed files only.
wait_ready() { # port of a role's /readyz
    python3 - "$1" <<'EOF'
import sys, time, urllib.request
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=1)
        sys.exit(0)
    except Exception:
        time.sleep(0.1)
sys.exit(f"no /readyz on port {sys.argv[1]}")
EOF
}
cd /
runuser -u veil-broker -- $PREFIX/veil broker --config /etc/veil/broker.toml 2>"$W/broker.log" &
PIDS+=($!)
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
runuser -u veil-server-b -- $PREFIX/veil server-b --config /etc/veil/server-b.toml \
    --metrics-listen 127.0.0.1:19465 2>"$W/server-b.log" &
PIDS+=($!)
runuser -u veil-server-a -- $PREFIX/veil server-a --config /etc/veil/server-a.toml \
    --metrics-listen 127.0.0.1:19464 2>"$W/server-a.log" &
PIDS+=($!)
wait_ready 19464
wait_ready 19465
head -n 4 /usr/share/veil/data/pima-test.csv >"$W/frames.csv"
chmod 0644 "$W/frames.csv"; chmod 0755 "$W"
runuser -u veil-edge -- $PREFIX/veil-edge-agent --config /etc/veil/edge-agent.toml \
    --csv "$W/frames.csv" --output /var/lib/veil/edge-agent/results.jsonl 2>"$W/agent.log" \
    || fail "the edge agent failed"
results=$(grep -c '"class"' /var/lib/veil/edge-agent/results.jsonl || true)
[ "$results" = 3 ] || fail "$results results for 3 frames"
echo "deploy-recipe: 3 frames served by roles running as veil-broker, veil-server-a, veil-server-b and veil-edge"

# The demo from /, as an operator runs it after installing: models, data
# and its accounts from /usr/share/veil, no checkout and no VEIL_SHARE_DIR.
(cd / && env -u VEIL_SHARE_DIR "$PREFIX/veil" demo --frames 3 --state-dir "$W/demo" >"$W/demo.log" 2>&1) \
    || fail "veil demo from / failed"
echo "deploy-recipe: veil demo ran from / with the installed models and data"

if [ -n "$DEBS" ] && [ "${KEEP:-0}" != 1 ]; then
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    dpkg --purge "${PACKAGES[@]}" >/dev/null
    for path in /etc/veil /var/lib/veil /usr/share/veil /usr/bin/veil /lib/systemd/system/veil-broker.service; do
        [ ! -e "$path" ] || fail "$path is left after dpkg --purge"
    done
    echo "deploy-recipe: dpkg --purge removed every file the packages and their scripts made"
fi
