"""Known-answer values for confide-trustee, computed independently of the Rust code.

Group arithmetic is libsodium's ristretto255 (through pysodium); hashing is Python's hashlib.
The protocol steps are written out again here from the specifications cited in
crates/trustee/src/secret.rs (TDH2 write proof, RFC 8235 key proof, RFC 9497 DLEQ, Lagrange
combination). Run: python3 -m venv v && v/bin/pip install pysodium && v/bin/python kat.py
(needs libsodium, e.g. apt install libsodium23). Its output (Rust constants) is pasted into tests/kat.rs;
`kat.py tests/kat.rs` checks instead that each constant in that file has the value computed here (CI runs this).
"""
import hashlib
import sys

import pysodium as s

L = 2**252 + 27742317777372353535851937790883648493


def xmd(msg, dst, n):
    ell = (n + 63) // 64
    dp = dst + bytes([len(dst)])
    b0 = hashlib.sha512(bytes(128) + msg + n.to_bytes(2, "big") + b"\0" + dp).digest()
    bi = hashlib.sha512(b0 + b"\x01" + dp).digest()
    out = bi
    for i in range(2, ell + 1):
        bi = hashlib.sha512(bytes(x ^ y for x, y in zip(b0, bi)) + bytes([i]) + dp).digest()
        out += bi
    return out[:n]


def h2s(msg, ctx):
    return s.crypto_core_ristretto255_scalar_reduce(xmd(msg, b"HashToScalar-" + ctx, 64))


def h2g(msg, ctx):
    return s.crypto_core_ristretto255_from_hash(xmd(msg, b"HashToGroup-" + ctx, 64))


def sc(n):
    return (n % L).to_bytes(32, "little")


def num(b):
    return int.from_bytes(b, "little")


def fr(b):
    return len(b).to_bytes(2, "big") + b


def mul(k, p):
    return s.crypto_scalarmult_ristretto255(k, p)


def base(k):
    return s.crypto_scalarmult_ristretto255_base(k)


add = s.crypto_core_ristretto255_add
sub = s.crypto_core_ristretto255_sub
G = base(sc(1))


def fixed(name):
    return s.crypto_core_ristretto255_scalar_reduce(hashlib.sha512(b"confide kat " + name).digest())


# A 3-of-4 sharing f(z) = a0 + a1 z + a2 z^2; X = a0 G.
a = [num(fixed(b"a%d" % i)) for i in range(3)]
shares = {i: sc(a[0] + a[1] * i + a[2] * i * i) for i in range(1, 5)}
X = base(sc(a[0]))

# The epoch: SHA-256 of t || X || (i || X_i)... (t and i as 16-bit big-endian).
group_bytes = (3).to_bytes(2, "big") + X
for i in range(1, 5):
    group_bytes += i.to_bytes(2, "big") + base(shares[i])
epoch = hashlib.sha256(group_bytes).hexdigest()

# Write (TDH2 with hashed ElGamal).
label_fields = [b"policy-digest", b"hospital-a", b"envelope-digest", epoch.encode()]
label = b"".join(fr(f) for f in label_fields)
secret = bytes(range(32))
r, w = fixed(b"r"), fixed(b"w")
Gbar = h2g(b"second generator", b"CONFIDE-TRUSTEE-V1")
U, Ubar = base(r), mul(r, Gbar)
pad = xmd(mul(r, X), b"CONFIDE-TRUSTEE-V1-pad", 32)
c = bytes(x ^ y for x, y in zip(secret, pad))
t = fr(c) + fr(label) + fr(U) + fr(base(w)) + fr(Ubar) + fr(mul(w, Gbar))
e = h2s(t, b"CONFIDE-TRUSTEE-V1-write")
f = sc(num(w) + num(r) * num(e))
write = fr(label) + fr(c) + fr(U) + fr(Ubar) + fr(e) + fr(f)
write_id = hashlib.sha256(write).hexdigest()

# Read request with an RFC 8235 key proof.
xc, v = fixed(b"xc"), fixed(b"v")
Xc = base(xc)
other = fr(write_id.encode()) + fr(b"job-1") + fr(b"train") + fr(Xc)
V = base(v)
ch = h2s(fr(G) + fr(V) + fr(Xc) + fr(b"trainer") + fr(other), b"CONFIDE-TRUSTEE-V1-reader")
rr = sc(num(v) - num(xc) * num(ch))

# Re-encryption shares from trustees 1, 2 and 4, each with an RFC 9497 DLEQ proof.
CTX = b"CONFIDE-TRUSTEE-V1-reencrypt"
B0 = add(U, Xc)
out = {}
for i in (1, 2, 4):
    k = shares[i]
    Xi = base(k)
    ui = mul(k, B0)
    seed = hashlib.sha512(fr(Xi) + fr(b"Seed-" + CTX)).digest()
    d0 = h2s(fr(seed) + (0).to_bytes(2, "big") + fr(B0) + fr(ui) + b"Composite", CTX)
    M = mul(d0, B0)
    Z = mul(k, M)
    nonce = fixed(b"nonce%d" % i)
    t2, t3 = base(nonce), mul(nonce, M)
    cc = h2s(fr(Xi) + fr(M) + fr(Z) + fr(t2) + fr(t3) + b"Challenge", CTX)
    ss = sc(num(nonce) - num(cc) * num(k))
    out[i] = (ui, cc + ss)

# Combination: sum of Lagrange-weighted shares, minus xc X, gives r X.
ids = [1, 2, 4]
comb = None
for i in ids:
    lam = 1
    for j in ids:
        if j != i:
            lam = lam * j * pow(j - i, -1, L) % L
    term = mul(sc(lam), out[i][0])
    comb = term if comb is None else add(comb, term)
rX = sub(comb, mul(xc, X))
opened = bytes(x ^ y for x, y in zip(c, xmd(rX, b"CONFIDE-TRUSTEE-V1-pad", 32)))
assert opened == secret

values = []


def emit(name, value):
    values.append((name, value))


emit("X", X.hex())
emit("EPOCH", epoch)
for i in range(1, 5):
    emit("S%d" % i, shares[i].hex())
for name, val in [("R", r), ("W", w), ("U", U), ("UBAR", Ubar), ("C", c), ("E", e), ("F", f)]:
    emit(name, val.hex())
emit("WRITE_ID", write_id)
for name, val in [("XC", xc), ("V", v), ("V_POINT", V), ("KEY_PROOF_R", rr)]:
    emit(name, val.hex())
for i in ids:
    emit("U%d" % i, out[i][0].hex())
    emit("PROOF%d" % i, out[i][1].hex())
    emit("NONCE%d" % i, fixed(b"nonce%d" % i).hex())
emit("OPENED", opened.hex())
if len(sys.argv) > 1:
    import re

    text = open(sys.argv[1]).read()
    consts = dict(re.findall(r'const ([A-Z0-9_]+): &str = "([0-9a-f]+)";', text))
    wrong = [n for n, v in values if consts.get(n) != v]
    if wrong:
        sys.exit("kat.py: constants of %s that differ: %s" % (sys.argv[1], ", ".join(wrong)))
    print("kat.py: all %d values match %s" % (len(values), sys.argv[1]))
else:
    for n, v in values:
        print('const %s: &str = "%s";' % (n, v))
