#!/usr/bin/env bash
# Installs veil roles on this host as config/README.md describes: service
# users, /etc/veil with permissions each service can read, keys and broker
# accounts, models under /usr/share/veil, systemd units (installed, not
# enabled). Run as root from a checkout or an unpacked release; safe to
# run again (it never replaces a key, password or config that exists).
# The Debian packages' maintainer scripts run it too (--packaged).
#
#   config/install.sh [--bin DIR] [--model NAME] [--device-dir DIR] ROLE...
#
# ROLE: broker, server-a, server-b, edge-agent (several on one host for a
# trial; in production each server on its own host, so that the two
# secret keys never meet).
#   --bin DIR         where the built `veil` (and `veil-edge-agent`) are
#                     (default: target/release of this checkout)
#   --model NAME      the model server A serves and B pins (default pima-mlp)
#   --device-dir DIR  edge-agent: the folder `veil provision device` wrote
#                     (its edge-agent-NAME.toml and NAME.password)
#   --no-systemd      do not install units (containers, tests)
#   --packaged        the files are where the packages put them (/usr/bin,
#                     /usr/share/veil, the configs in /etc/veil as
#                     conffiles, the units in /lib/systemd/system): make
#                     only users, folders, permissions, keys and accounts
#
# Layout (owner:group mode):
#   /etc/veil                 root:veil 0750   configs root:veil 0640
#   /etc/veil/keys            root:veil 0750   X.key veil-X 0600, X.pub 0644
#   /etc/veil/secrets         root:veil 0750   X.password veil-X 0600
#   /etc/veil/passwords       veil-broker 0600 (the broker re-reads it on SIGHUP)
#   /var/lib/veil/ROLE        veil-ROLE 0700   (systemd's StateDirectory too)
#   /usr/local/bin/veil, /usr/local/bin/veil-edge-agent (stripped)
#   /usr/share/veil/{models,data,config}
# A server's broker account goes into /etc/veil/passwords when the broker is
# on this host (installed before, or named in the same run); otherwise its
# line is printed and kept in /etc/veil/secrets/ROLE.account (root, 0600),
# which installing the broker here later adds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=
MODEL=pima-mlp
DEVICE_DIR=
SYSTEMD=1
PACKAGED=0
ROLES=()
while [ $# -gt 0 ]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --device-dir) DEVICE_DIR=$2; shift 2 ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --packaged) PACKAGED=1; shift ;;
        -h|--help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        broker|server-a|server-b|edge-agent) ROLES+=("$1"); shift ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#ROLES[@]} -gt 0 ] || { echo "install.sh: name at least one role (see --help)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

ETC=/etc/veil
SHARE=/usr/share/veil
say() { echo "install: $*"; }
user_of() { if [ "$1" = edge-agent ]; then echo veil-edge; else echo "veil-$1"; fi; }
has_role() { local r; for r in "${ROLES[@]}"; do [ "$r" = "$1" ] && return 0; done; return 1; }
# The servers' steps run `veil` (keygen, provision, topology); a checkout
# installs it for every role.
if [ "$PACKAGED" = 1 ]; then
    BIN=${BIN:-/usr/bin}
    V=$BIN/veil
    if has_role server-a || has_role server-b; then
        [ -x "$V" ] || { echo "install.sh: no $V (package veil)" >&2; exit 1; }
    fi
else
    BIN=${BIN:-$ROOT/target/release}
    V=/usr/local/bin/veil
    [ -x "$BIN/veil" ] || { echo "install.sh: no veil binary in $BIN (build: cargo build --release -p veil)" >&2; exit 1; }
fi
# install_config SRC DEST: a config readable by every veil service, kept if
# present (a package's conffile always is).
install_config() {
    if [ -e "$2" ]; then
        say "kept $2"
    elif [ "$PACKAGED" = 1 ]; then
        echo "install.sh: $2 is missing (reinstall the package that ships it)" >&2; exit 1
    else
        install -m 0640 "$1" "$2"; say "wrote $2"
    fi
    chown root:veil "$2"; chmod 0640 "$2"
}
# secret_of FILE USER: a secret readable by its service alone.
secret_of() { chown "$2:veil" "$1"; chmod 0600 "$1"; }

getent group veil >/dev/null || { groupadd --system veil; say "group veil"; }
for role in "${ROLES[@]}"; do
    user=$(user_of "$role")
    if ! getent passwd "$user" >/dev/null; then
        useradd --system --gid veil --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$user"
        say "user $user"
    fi
    install -d -o "$user" -g veil -m 0700 "/var/lib/veil/$role"
done
install -d -o root -g root -m 0755 /var/lib/veil
install -d -o root -g veil -m 0750 "$ETC" "$ETC/keys" "$ETC/secrets"

if [ "$PACKAGED" = 0 ]; then
    # Binaries, stripped when strip is at hand (the release build keeps symbols).
    install_bin() {
        install -m 0755 "$1" "/usr/local/bin/$2"
        if command -v strip >/dev/null 2>&1; then strip "/usr/local/bin/$2"; fi
        say "/usr/local/bin/$2 ($(stat -c %s "/usr/local/bin/$2") bytes)"
    }
    install_bin "$BIN/veil" veil
    if has_role edge-agent; then
        [ -x "$BIN/veil-edge-agent" ] || { echo "install.sh: no veil-edge-agent in $BIN" >&2; exit 1; }
        install_bin "$BIN/veil-edge-agent" veil-edge-agent
    fi

    # Shared files: models (server A's plan), data sets and example configs
    # (with the demo's password file: `veil demo` reads it from here).
    install -d -m 0755 "$SHARE" "$SHARE/models" "$SHARE/data" "$SHARE/config"
    install -m 0644 "$ROOT"/models/*.plan "$ROOT"/models/*.onnx "$SHARE/models/"
    install -m 0644 "$ROOT"/data/*.csv "$ROOT"/data/*.gz "$SHARE/data/"
    install -m 0644 "$ROOT"/config/*.toml "$ROOT"/config/acl "$ROOT"/config/passwords "$SHARE/config/"
fi
PLAN=$SHARE/models/$MODEL.plan
if has_role server-a || has_role server-b; then
    [ -e "$PLAN" ] || { echo "install.sh: no model $PLAN" >&2; exit 1; }
fi

if has_role broker; then
    install_config "$ROOT/config/broker.toml" "$ETC/broker.toml"
    install_config "$ROOT/config/acl" "$ETC/acl"
    [ -e "$ETC/passwords" ] || : >"$ETC/passwords"
    secret_of "$ETC/passwords" veil-broker
    # Accounts of servers installed on this host before the broker.
    for account in "$ETC"/secrets/*.account; do
        [ -e "$account" ] || continue
        user=$(cut -d: -f1 "$account")
        if ! grep -q "^$user:" "$ETC/passwords"; then
            cat "$account" >>"$ETC/passwords"
            say "added $user's account (from $account) to $ETC/passwords"
        fi
    done
fi

for role in server-a server-b; do
    has_role "$role" || continue
    user=$(user_of "$role")
    if [ ! -e "$ETC/keys/$role.key" ]; then
        "$V" keygen --role "$role" --out "$ETC/keys" >/dev/null
        say "key pair $ETC/keys/$role.{key,pub}"
    fi
    secret_of "$ETC/keys/$role.key" "$user"
    chmod 0644 "$ETC/keys/$role.pub"
    if [ ! -e "$ETC/secrets/$role.password" ]; then
        # The account goes into this host's password file when the broker
        # is here; otherwise provision prints the line for the broker's
        # host, and it is kept for a broker installed here later.
        if [ -e "$ETC/passwords" ]; then
            "$V" provision "$role" --out "$ETC/secrets" --password-file "$ETC/passwords"
        else
            out=$("$V" provision "$role" --out "$ETC/secrets")
            echo "$out"
            (umask 077; grep -o "$role:[$]7[$][^ ]*" <<<"$out" >"$ETC/secrets/$role.account")
        fi
    fi
    secret_of "$ETC/secrets/$role.password" "$user"
    install_config "$ROOT/config/$role.toml" "$ETC/$role.toml"
done
# The shipped configs name pima-mlp's files; a package's conffiles are not
# edited (it installs only the default model).
if has_role server-a && [ "$PACKAGED" = 0 ]; then
    sed -i "s|^model_file = .*|model_file = \"$PLAN\"|" "$ETC/server-a.toml"
fi
if has_role server-b; then
    # B pins the topology from a file, so it need not wait for A.
    "$V" topology --model "$PLAN" --out "$ETC/$MODEL.topology" >/dev/null
    chown root:veil "$ETC/$MODEL.topology"; chmod 0640 "$ETC/$MODEL.topology"
    if [ "$PACKAGED" = 0 ]; then
        sed -i -e "s|^model = .*|model = \"$MODEL\"|" \
            -e "s|^topology_file = .*|topology_file = \"$ETC/$MODEL.topology\"|" \
            "$ETC/server-b.toml"
    fi
fi
if has_role server-a && [ ! -e "$ETC/keys/server-b.pub" ]; then
    say "server A needs B's public key: copy server-b.pub from B's host to $ETC/keys/"
fi

if has_role edge-agent; then
    if [ -n "$DEVICE_DIR" ]; then
        config=$(ls "$DEVICE_DIR"/edge-agent-*.toml | head -1)
        password=$(ls "$DEVICE_DIR"/*.password | head -1)
        install_config "$config" "$ETC/edge-agent.toml"
        if [ ! -e "$ETC/secrets/device.password" ]; then
            install -o veil-edge -g veil -m 0600 "$password" "$ETC/secrets/device.password"
            say "wrote $ETC/secrets/device.password"
        fi
    elif [ "$PACKAGED" = 1 ]; then
        install_config "" "$ETC/edge-agent.toml"
        say "edge agent: put the device's provisioned files in place (config/README.md, \"Installing from the packages\")"
    else
        say "edge agent: provision the device (veil provision device NAME ...) and pass --device-dir"
    fi
fi

if [ "$SYSTEMD" = 1 ]; then
    if [ "$PACKAGED" = 0 ]; then
        # The units name the packages' /usr/bin; this copy runs /usr/local/bin.
        for role in "${ROLES[@]}"; do
            units=("veil-$role.service")
            if [ "$role" = edge-agent ]; then units+=(veil-edge-agent.socket); fi
            for unit in "${units[@]}"; do
                sed 's|=/usr/bin/veil|=/usr/local/bin/veil|' "$ROOT/config/systemd/$unit" >"/etc/systemd/system/$unit"
                chmod 0644 "/etc/systemd/system/$unit"
            done
        done
    fi
    if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
    say "units installed, not enabled: systemctl enable --now $(printf 'veil-%s ' "${ROLES[@]}")"
fi
