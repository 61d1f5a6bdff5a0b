#!/usr/bin/env python3
"""Hand-built valid inputs for the broker targets (MQTT packets as veil's
clients send them, the shipped ACL and password files) and the Paillier
targets (the fixture keys). Writes into the directory given (default:
corpus/), one subdirectory per target. The protocol targets are seeded from
a real run instead: VEIL_FUZZ_SEEDS=<dir> cargo test -p veil-protocol
--test fuzz_regressions."""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    data = text.encode() if isinstance(text, str) else text
    return struct.pack(">H", len(data)) + data


def packet(kind, flags, body):
    return bytes([(kind << 4) | flags]) + varint(len(body)) + body


def connect(level, client_id, user, password, clean=True, will=None, props=b""):
    flags = 0xC0 | (0x02 if clean else 0)
    body = s("MQTT") + bytes([level])
    tail = b""
    if will:
        topic, payload, qos = will
        flags |= 0x04 | (qos << 3)
        tail = (varint(0) if level == 5 else b"") + s(topic) + s(payload)
    body += bytes([flags]) + struct.pack(">H", 30)
    if level == 5:
        body += varint(len(props)) + props
    body += s(client_id) + tail + s(user) + s(password)
    return packet(1, 0, body)


def publish(level, topic, payload, qos=1, pkid=1, retain=False, props=b""):
    body = s(topic) + (struct.pack(">H", pkid) if qos else b"")
    if level == 5:
        body += varint(len(props)) + props
    return packet(3, (qos << 1) | int(retain), body + payload)


def subscribe(level, pkid, filters):
    body = struct.pack(">H", pkid) + (varint(0) if level == 5 else b"")
    for f, opts in filters:
        body += s(f) + bytes([opts])
    return packet(8, 2, body)


def seeds():
    frame = "veil/v1/dev/devA/frame"
    v4 = [
        connect(4, "devA", "devA", "demo-devA"),
        connect(4, "server-a-a1", "server-a", "demo-server-a", clean=False),
        connect(4, "", "devB", "demo-devB", will=("veil/v1/dev/devB/ack", b"bye", 1)),
        publish(4, frame, bytes(range(87))),
        publish(4, "veil/v1/dev/devA/session/a", b"\x01" * 40, retain=True),
        publish(4, "veil/v1/pub/a/key", b"k", qos=0),
        subscribe(4, 7, [("veil/v1/dev/devA/result", 1)]),
        subscribe(4, 8, [("$share/veil-a/veil/v1/dev/+/frame", 1), ("veil/v1/ba/a1", 1)]),
        packet(4, 0, struct.pack(">H", 1)),
        packet(6, 2, struct.pack(">H", 2)),
        packet(12, 0, b""),
        packet(14, 0, b""),
    ]
    v5 = [
        connect(5, "devA", "devA", "demo-devA", props=b"\x22\x00\x10\x27\x00\x10\x00\x00"),
        publish(5, frame, b"\x00" * 16, props=b"\x23\x00\x01"),
        publish(5, frame, b"x", qos=2, pkid=9, props=b"\x01\x01\x26" + s("k") + s("v")),
        subscribe(5, 3, [("veil/v1/dev/devA/result", 0x05)]),
        packet(2, 0, b"\x00\x00\x03\x22\x00\x0a"),
        packet(9, 0, b"\x00\x03\x00\x01\x87"),
        packet(14, 0, b"\x00\x00"),
    ]
    stream = b"".join(v4)
    out = {"broker_frames": [stream] + v4 + v5}
    # broker_packet: selector byte (version bit, type, flags) + body.
    packets = []
    for level, p in [(4, x) for x in v4] + [(5, x) for x in v5]:
        kind, flags = p[0] >> 4, p[0] & 0x0F
        i = 1
        while p[i] & 0x80:
            i += 1
        flags_sel = 7 if flags == 0x0F else flags
        packets.append(bytes([(0x80 if level == 5 else 0) | (kind << 3) | (flags_sel & 7)]) + p[i + 1:])
    out["broker_packet"] = packets
    with open(os.path.join(ROOT, "config", "acl"), "rb") as f:
        acl = f.read()
    with open(os.path.join(ROOT, "config", "passwords"), "rb") as f:
        passwords = f.read()
    out["broker_acl"] = [
        b"devA devA\n" + acl,
        b"server-a server-a-a1\n" + acl,
        b"- anon\ntopic read public/#\nuser u\ntopic deny u/secret\npattern read c/%c/#\n",
    ]
    out["broker_passwords"] = [passwords]
    out["broker_topics"] = [
        b"veil/v1/dev/+/frame\0veil/v1/dev/devA/frame",
        b"veil/v1/ab/#\0veil/v1/ab/+/x",
        b"$share/veil-a/veil/v1/dev/+/frame\0$share/veil-a/veil/v1/dev/devA/frame",
        b"+/#\0$SYS/x",
    ]
    fixtures = os.path.join(ROOT, "paillier", "fixtures")
    secret = []
    for name in sorted(os.listdir(fixtures)):
        with open(os.path.join(fixtures, name), "rb") as f:
            secret.append(f.read())
    out["paillier_secret_key"] = secret
    out["model_input_bounds"] = [
        b"0:20,0:300,0:200,0:100,0:80,0:3,20:100",
        b"# Pima\n0:17\n0:199 # glucose\n-1.5e1:2.5E+2,\n",
        b"16,24",
    ]
    # model_calibration: selector (bit 7: IDX, else CSV; bits 0-6: width),
    # row limit, then the file.
    with open(os.path.join(ROOT, "data", "pima-train.csv"), "rb") as f:
        pima = b"".join(f.readlines()[:12])
    idx = bytes([0, 0, 8, 3]) + struct.pack(">III", 3, 2, 2) + bytes(range(0, 240, 20))
    out["model_calibration"] = [
        bytes([7, 8]) + pima,
        bytes([2, 3]) + b"a,b\n1,2\n\n-3.5,4e1,x\n",
        bytes([0x80 | 4, 2]) + idx,
    ]
    return out


def main():
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    for target, items in seeds().items():
        d = os.path.join(dest, target)
        os.makedirs(d, exist_ok=True)
        for i, data in enumerate(items):
            with open(os.path.join(d, "seed-%02d" % i), "wb") as f:
                f.write(data)
        print(target, len(items))


if __name__ == "__main__":
    main()
