#!/usr/bin/env bash
# Installs veil roles on this host as config/README.md describes: service
# users, /etc/veil with permissions each service can read, keys and broker
# accounts, models under /usr/share/veil, systemd units (installed, not
# enabled). Run as root from a checkout or an unpacked release; safe to
# run again (it never replaces a key, password or config that exists).
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
#
# Layout (owner:group mode):
#   /etc/veil                 root:veil 0750   configs root:veil 0640
#   /etc/veil/keys            root:veil 0750   X.key veil-X 0600, X.pub 0644
#   /etc/veil/secrets         root:veil 0750   X.password veil-X 0600
#   /etc/veil/passwords       veil-broker 0600 (the broker re-reads it on SIGHUP)
#   /var/lib/veil/ROLE        veil-ROLE 0700   (systemd's StateDirectory too)
#   /usr/local/bin/veil, /usr/local/bin/veil-edge-agent (stripped)
#   /usr/share/veil/{models,data,config}
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
MODEL=pima-mlp
DEVICE_DIR=
SYSTEMD=1
ROLES=()
while [ $# -gt 0 ]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --device-dir) DEVICE_DIR=$2; shift 2 ;;
        --no-systemd) SYSTEMD=0; shift ;;
        -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        broker|server-a|server-b|edge-agent) ROLES+=("$1"); shift ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#ROLES[@]} -gt 0 ] || { echo "install.sh: name at least one role (see --help)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
[ -x "$BIN/veil" ] || { echo "install.sh: no veil binary in $BIN (build: cargo build --release -p veil)" >&2; exit 1; }

ETC=/etc/veil
SHARE=/usr/share/veil
say() { echo "install: $*"; }
user_of() { if [ "$1" = edge-agent ]; then echo veil-edge; else echo "veil-$1"; fi; }
has_role() { local r; for r in "${ROLES[@]}"; do [ "$r" = "$1" ] && return 0; done; return 1; }
# install_config SRC DEST: a config readable by every veil service, kept if present.
install_config() {
    if [ -e "$2" ]; then say "kept $2"; else install -o root -g veil -m 0640 "$1" "$2"; say "wrote $2"; fi
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
V=/usr/local/bin/veil

# Shared files: models (server A's plan), data sets and example configs.
install -d -m 0755 "$SHARE" "$SHARE/models" "$SHARE/data" "$SHARE/config"
install -m 0644 "$ROOT"/models/*.plan "$ROOT"/models/*.onnx "$SHARE/models/"
install -m 0644 "$ROOT"/data/*.csv "$SHARE/data/" 2>/dev/null || true
install -m 0644 "$ROOT"/config/*.toml "$ROOT"/config/acl "$SHARE/config/"
PLAN=$SHARE/models/$MODEL.plan
[ -e "$PLAN" ] || { echo "install.sh: no model $PLAN" >&2; exit 1; }

if has_role broker; then
    install_config "$ROOT/config/broker.toml" "$ETC/broker.toml"
    install_config "$ROOT/config/acl" "$ETC/acl"
    [ -e "$ETC/passwords" ] || : >"$ETC/passwords"
    secret_of "$ETC/passwords" veil-broker
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
        # is here; otherwise provision prints the line for the broker's host.
        accounts=()
        if has_role broker; then accounts=(--password-file "$ETC/passwords"); fi
        "$V" provision "$role" --out "$ETC/secrets" "${accounts[@]}"
    fi
    secret_of "$ETC/secrets/$role.password" "$user"
    install_config "$ROOT/config/$role.toml" "$ETC/$role.toml"
done
if has_role server-a; then
    sed -i "s|^model_file = .*|model_file = \"$PLAN\"|" "$ETC/server-a.toml"
fi
if has_role server-b; then
    # B pins the topology from a file, so it need not wait for A.
    "$V" topology --model "$PLAN" --out "$ETC/$MODEL.topology" >/dev/null
    chown root:veil "$ETC/$MODEL.topology"; chmod 0640 "$ETC/$MODEL.topology"
    sed -i -e "s|^model = .*|model = \"$MODEL\"|" \
        -e "s|^topology_fingerprint = .*|topology_file = \"$ETC/$MODEL.topology\"|" \
        "$ETC/server-b.toml"
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
    else
        say "edge agent: provision the device (veil provision device NAME ...) and pass --device-dir"
    fi
fi

if [ "$SYSTEMD" = 1 ]; then
    for role in "${ROLES[@]}"; do
        install -m 0644 "$ROOT/config/systemd/veil-$role.service" /etc/systemd/system/
        if [ "$role" = edge-agent ]; then
            install -m 0644 "$ROOT/config/systemd/veil-edge-agent.socket" /etc/systemd/system/
        fi
    done
    if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
    say "units installed, not enabled: systemctl enable --now $(printf 'veil-%s ' "${ROLES[@]}")"
fi
