#!/usr/bin/env bash
# The hostile-client run of tests/tests/hostile.rs, with every role in its
# own process as a deployment runs them, so that each role's peak RSS can
# be read on its own (the test holds all roles in one process and bounds
# their sum). Not part of CI: it takes a few minutes and measures; the
# bounds are asserted by the test.
#
#   cargo build --release -p veil && tests/hostile-roles.sh [target/release/veil]
#
# Environment: DEVICES (8), FRAMES per device and phase (20), INTERVAL_MS
# between a device's frames (500: paced below the servers' capacity, so
# that latency measures service, not a queue), PORT (18830),
# MODEL (pima-mlp), CSV (data/pima-test.csv), KEEP=1 keeps the work folder.
#
# Two phases with the same broker and servers: the honest devices alone,
# then the same devices again while `veil attack` floods as one more
# authenticated device. Each role's VmHWM (peak RSS) is read after each
# phase; the agents' peaks come from /usr/bin/time.
set -euo pipefail

V=$(realpath "${1:-target/release/veil}")
DEVICES=${DEVICES:-8}
FRAMES=${FRAMES:-20}
INTERVAL_MS=${INTERVAL_MS:-500}
PORT=${PORT:-18830}
MODEL=${MODEL:-pima-mlp}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CSV=${CSV:-$ROOT/data/pima-test.csv}
PLAN=$ROOT/models/$MODEL.plan
W=$(mktemp -d /tmp/veil-hostile-roles.XXXXXX)
chmod 700 "$W"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work folder kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
wait_ready() { # port of a /readyz endpoint
    for _ in $(seq 1 600); do
        if curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "no /readyz on port $1" >&2
    return 1
}
pbkdf2_line() { # user password: a $7$ line as mosquitto_passwd writes it
    python3 - "$1" "$2" <<'EOF'
import base64, hashlib, os, sys
salt = os.urandom(12)
h = hashlib.pbkdf2_hmac("sha512", sys.argv[2].encode(), salt, 101, 64)
print(f"{sys.argv[1]}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(h).decode()}")
EOF
}

cd "$W"
"$V" keygen --role all --out keys >/dev/null 2>&1
"$V" topology --model "$PLAN" --out "$MODEL.topology" >/dev/null
cp "$ROOT/config/acl" acl
mkdir -p secrets && chmod 700 secrets
: > passwords
for role in server-a server-b; do
    pw=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
    printf '%s\n' "$pw" > "secrets/$role.password"
    chmod 600 "secrets/$role.password"
    pbkdf2_line "$role" "$pw" >> passwords
done
names=()
for i in $(seq 0 $((DEVICES - 1))); do names+=("dev$i"); done
for name in "${names[@]}" attacker; do
    "$V" provision device "$name" --a-key keys/server-a.pub --b-key keys/server-b.pub \
        --model "$PLAN" --broker-url "mqtt://127.0.0.1:$PORT" --out "devices/$name" \
        --password-file passwords --acl acl --state-dir "$W/devices/$name/state" >/dev/null
done

sed -e "s|^listen = .*|listen = \"127.0.0.1:$PORT\"|" \
    -e "s|^password_file = .*|password_file = \"$W/passwords\"|" \
    -e "s|^acl_file = .*|acl_file = \"$W/acl\"|" \
    "$ROOT/config/broker.toml" > broker.toml
for role in server-a server-b; do
    sed -e "s|^state_dir = .*|state_dir = \"$W/state/$role\"|" \
        -e "s|^key_file = .*|key_file = \"$W/keys/$role.key\"|" \
        -e "s|^model_file = .*|model_file = \"$PLAN\"|" \
        -e "s|^b_key_file = .*|b_key_file = \"$W/keys/server-b.pub\"|" \
        -e "s|^model = .*|model = \"$MODEL\"|" \
        -e "s|^topology_fingerprint = .*|topology_file = \"$W/$MODEL.topology\"|" \
        -e "s|^url = .*|url = \"mqtt://127.0.0.1:$PORT\"|" \
        -e "s|^password_file = .*|password_file = \"$W/secrets/$role.password\"|" \
        "$ROOT/config/$role.toml" > "$role.toml"
done

"$V" broker --config broker.toml --log warn 2>broker.log &
PIDS+=($!); BROKER=$!
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
"$V" server-b --config server-b.toml --log warn --metrics-listen 127.0.0.1:$((PORT + 2)) 2>server-b.log &
PIDS+=($!); B=$!
"$V" server-a --config server-a.toml --log warn --metrics-listen 127.0.0.1:$((PORT + 1)) 2>server-a.log &
PIDS+=($!); A=$!
wait_ready $((PORT + 1))
wait_ready $((PORT + 2))

head -n $((FRAMES + 1)) "$CSV" > frames.csv
# One phase: every device replays FRAMES rows; prints "p50 p95 results peak-agent-MiB".
phase() {
    local tag=$1 pids=()
    for name in "${names[@]}"; do
        VEIL_MQTT_PASSWORD_FILE="$W/devices/$name/$name.password" \
            /usr/bin/time -f %M -o "$tag-$name.rss" "$V" edge-agent \
            --config "devices/$name/edge-agent-$name.toml" --csv frames.csv --interval-ms "$INTERVAL_MS" \
            --output "$tag-$name.jsonl" --log warn 2>"$tag-$name.log" &
        pids+=($!)
    done
    local failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
    cat "$tag"-dev*.jsonl | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
lat = sorted(r["latency_ms"] for r in rows if "latency_ms" in r) or [float("nan")]
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
n = sum(1 for r in rows if "latency_ms" in r)
print(f"{q(0.5):.1f} {q(0.95):.1f} {n}", end=" ")'
    sort -n "$tag"-dev*.rss | tail -1 | awk '{ printf "%.1f", $1 / 1024 }'
    echo " $failed"
}

read -r p50 p95 n agent_rss failed < <(phase calm)
echo "without attacker: $n/$((DEVICES * FRAMES)) results, p50 $p50 ms, p95 $p95 ms, failed agents $failed"
calm=("$(hwm_mib $BROKER)" "$(hwm_mib $A)" "$(hwm_mib $B)" "$agent_rss")

"$V" attack --broker-url "mqtt://127.0.0.1:$PORT" --username attacker \
    --password-file devices/attacker/attacker.password --secs 3600 \
    --victim server-a --victim server-b --victim dev0 --victim dev1 \
    --a-key keys/server-a.pub --b-key keys/server-b.pub --model "$PLAN" \
    >attack.txt 2>attack.log &
ATTACK=$!; PIDS+=($ATTACK)
sleep 3
read -r hp50 hp95 hn hagent_rss hfailed < <(phase attack)
kill -INT $ATTACK; wait $ATTACK || echo "veil attack exited non-zero (see attack.log)"
echo "with attacker:    $hn/$((DEVICES * FRAMES)) results, p50 $hp50 ms, p95 $hp95 ms, failed agents $hfailed"
echo
printf '%-10s %18s %18s\n' role "peak RSS calm MiB" "peak RSS attack MiB"
printf '%-10s %18s %18s\n' broker "${calm[0]}" "$(hwm_mib $BROKER)"
printf '%-10s %18s %18s\n' server-a "${calm[1]}" "$(hwm_mib $A)"
printf '%-10s %18s %18s\n' server-b "${calm[2]}" "$(hwm_mib $B)"
printf '%-10s %18s %18s\n' "agent max" "${calm[3]}" "$hagent_rss"
echo
for port in $((PORT + 1)) $((PORT + 2)); do
    curl -fsS "http://127.0.0.1:$port/metrics" | grep -E '^veil_server_[ab]_(sessions|frames|results|redelivered|acked|rejected)_total|^veil_server_b_queued' | paste -sd ' '
done
grep -E "published|sessions|forged|takeovers|subscriptions|rejects|disconnects|huge|malformed|jumps" attack.txt | tr -s ' ' | paste -sd ' '
[ "$n" = $((DEVICES * FRAMES)) ] && [ "$hn" = $((DEVICES * FRAMES)) ] && [ "$failed" = 0 ] && [ "$hfailed" = 0 ]
