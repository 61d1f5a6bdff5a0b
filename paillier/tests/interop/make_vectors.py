#!/usr/bin/env python3
"""Known-answer vectors for veil's Paillier engine, made with python-paillier.

python-paillier (`phe`) implements Paillier with g = N + 1, like veil. This
script writes `phe_vectors.json`: keys (p, q), encryptions with recorded
randomness r, and homomorphic results computed by phe. veil's tests read the
file: veil must decrypt phe's ciphertexts and reproduce phe's homomorphic
results bit for bit.

The file also has a "veil" section that veil writes
(`cargo run -p veil-paillier --example interop_vectors`). When this script
runs again it decrypts every veil ciphertext with phe, checks it against the
recorded plaintext, records the outcome in "veil.checked_by_phe", and keeps
the keys, so the two directions stay in one file. Usage:

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/python make_vectors.py            # phe -> file (keeps keys)
    cargo run -p veil-paillier --example interop_vectors   # veil -> file
    .venv/bin/python make_vectors.py            # phe checks veil's part
"""

import json
import os
import random
import sys

import phe
from phe import paillier
from gmpy2 import invert, powmod

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "phe_vectors.json")


def residue(m, n):
    return m % n


def signed(res, n):
    return res - n if res > n // 2 else res


def make_key(bits):
    public, private = paillier.generate_paillier_keypair(n_length=bits)
    return {"name": f"phe-{bits}", "bits": bits, "p": hex(private.p), "q": hex(private.q), "n": hex(public.n)}


def vectors_for(key, rng):
    p, q = int(key["p"], 16), int(key["q"], 16)
    n = p * q
    public = paillier.PaillierPublicKey(n)
    private = paillier.PaillierPrivateKey(public, p, q)
    nn = n * n
    half = n // 2
    plaintexts = [0, 1, -1, 2, -2, 65535, -65536, 2**64, -(2**64), 2**255 - 1, -(2**255 - 1),
                  half, -half, half - 1, -(half - 1)]
    plaintexts += [rng.randrange(-half, half + 1) for _ in range(8)]
    encryptions = []
    for m in plaintexts:
        r = rng.randrange(1, n)
        c = public.raw_encrypt(residue(m, n), r_value=r)
        assert private.raw_decrypt(c) == residue(m, n)
        encryptions.append({"m": str(m), "r": hex(r), "c": hex(c)})
    cts = [int(e["c"], 16) for e in encryptions]
    ms = [int(e["m"]) for e in encryptions]

    def enc_number(c):
        return paillier.EncryptedNumber(public, c)

    additions = []
    for _ in range(8):
        a, b = rng.randrange(len(cts)), rng.randrange(len(cts))
        c = enc_number(cts[a])._raw_add(cts[a], cts[b])
        additions.append({"a": a, "b": b, "c": hex(c), "m": str(signed(residue(ms[a] + ms[b], n), n))})
    scalar_mults = []
    for k in [0, 1, -1, 3, -3, 32767, -32768, 65535, 2**40 + 7, -(2**40 + 7)] + [rng.randrange(-2**16, 2**16) for _ in range(6)]:
        a = rng.randrange(len(cts))
        c = enc_number(cts[a])._raw_mul(residue(k, n))
        scalar_mults.append({"a": a, "k": str(k), "c": hex(c), "m": str(signed(residue(ms[a] * k, n), n))})
    plain_additions = []
    for k in [0, 1, -1, 12345, -12345, 2**100, -(2**100)]:
        a = rng.randrange(len(cts))
        constant = public.raw_encrypt(residue(k, n), r_value=1)
        c = enc_number(cts[a])._raw_add(cts[a], constant)
        plain_additions.append({"a": a, "k": str(k), "c": hex(c), "m": str(signed(residue(ms[a] + k, n), n))})
    # A dot product, the way server A computes linear layers.
    idx = [rng.randrange(len(cts)) for _ in range(12)]
    weights = [rng.randrange(-2**15, 2**15) for _ in idx]
    acc = 1
    total = 0
    for i, w in zip(idx, weights):
        acc = (acc * enc_number(cts[i])._raw_mul(residue(w, n))) % nn
        total += ms[i] * w
    dot = {"indices": idx, "weights": [str(w) for w in weights], "c": hex(acc), "m": str(signed(residue(total, n), n))}
    return {"key": key["name"], "encryptions": encryptions, "additions": additions,
            "scalar_mults": scalar_mults, "plain_additions": plain_additions, "dot": dot}


def check_veil(doc):
    veil = doc.get("veil")
    if not veil:
        print("no veil section yet: run `cargo run -p veil-paillier --example interop_vectors`, then this script again")
        return
    keys = {k["name"]: k for k in doc["keys"]}
    key = keys[veil["key"]]
    p, q = int(key["p"], 16), int(key["q"], 16)
    n = p * q
    public = paillier.PaillierPublicKey(n)
    private = paillier.PaillierPrivateKey(public, p, q)
    ok = 0
    for entry in veil["ciphertexts"]:
        got = signed(private.raw_decrypt(int(entry["c"], 16)), n)
        if got != int(entry["m"]):
            sys.exit(f"phe decrypts veil ciphertext ({entry['how']}) to {got}, veil recorded {entry['m']}")
        ok += 1
    veil["checked_by_phe"] = {"count": ok, "phe_version": phe.__version__}
    print(f"phe decrypted all {ok} veil ciphertexts correctly")


def main():
    rng = random.Random(20261125)
    old = None
    if os.path.exists(PATH):
        with open(PATH) as f:
            old = json.load(f)
    keys = old["keys"] if old else [make_key(2048), make_key(3072)]
    doc = {
        "generator": f"make_vectors.py with python-paillier {phe.__version__}",
        "keys": keys,
        "vectors": [vectors_for(k, rng) for k in keys],
    }
    if old and "veil" in old:
        doc["veil"] = old["veil"]
        doc["veil"].pop("checked_by_phe", None)
    check_veil(doc)
    with open(PATH, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
