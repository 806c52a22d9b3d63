"""Interoperability of Confide's PKI with standard gRPC and OpenSSL (the hardening issue, item 11).

grpc-python (grpc-core with BoringSSL) completes mutual TLS with a Confide role server using
the federation's certificates, and OpenSSL 3 reads every key Confide writes. Run by .ci/run:

    python3 tests/interop/grpc_python.py target/debug/confide

Needs the `grpcio` package (pip) and the `openssl` command.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIDE = pathlib.Path(sys.argv[1]).resolve()
TEST_KEY = ROOT / "crates/crypto/testdata/paillier-2048-TEST-ONLY.json"

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail else ""), flush=True)


def confide(*args, **kw):
    return subprocess.run([str(CONFIDE), *map(str, args)], check=True, capture_output=True, text=True, **kw)


def channel(fed, who, addr, server):
    creds = grpc.ssl_channel_credentials(
        root_certificates=(fed / "ca.crt").read_bytes(),
        private_key=(fed / f"{who}.tls.key").read_bytes(),
        certificate_chain=(fed / f"{who}.crt").read_bytes(),
    )
    return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", server)])


def call(ch, service, method, body=b""):
    fn = ch.unary_unary(f"/confide.v1.{service}/{method}", request_serializer=None, response_deserializer=None)
    try:
        return None, fn(body, timeout=20)
    except grpc.RpcError as e:
        return e, None


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="confide-interop-"))
    fed = work / "fed"
    confide("ca", "init", "--dir", fed, "--federation", "interop")
    for name, role in [("keyholder", "keyholder"), ("guest", "node"), ("coordinator", "coordinator")]:
        confide("ca", "issue", "--dir", fed, "--name", name, "--role", role)
    # An identity made by its owner (keygen) and certified from its public file.
    confide("keygen", "--out", work / "owner.key")
    confide("ca", "issue", "--dir", fed, "--name", "owner", "--role", "model-owner", "--public-key", work / "owner.key.pub")
    for f in ["owner.key", "owner.tls.key"]:
        shutil.copy(work / f, fed / f)

    # OpenSSL reads every key Confide wrote.
    for key in ["ca.key", "guest.key", "guest.tls.key", "owner.key", "owner.tls.key"]:
        r = subprocess.run(["openssl", "pkey", "-in", fed / key, "-noout"], capture_output=True, text=True)
        check(f"openssl reads {key}", r.returncode == 0, r.stderr.strip())
    r = subprocess.run(["openssl", "verify", "-CAfile", fed / "ca.crt", fed / "guest.crt"], capture_output=True, text=True)
    check("openssl verifies a party certificate against the federation CA", r.returncode == 0, r.stdout.strip() + r.stderr.strip())

    job = work / "job.toml"
    text = (ROOT / "examples/breast_homo.toml").read_text()
    job.write_text(text.replace('"../data/', f'"{ROOT}/data/').replace('"policies/', f'"{ROOT}/examples/policies/').replace('"keys/', f'"{ROOT}/examples/keys/'))
    kh = subprocess.Popen(
        [str(CONFIDE), "keyholder", "--config", str(job), "--fed", str(fed), "--key", str(TEST_KEY)],
        stdout=subprocess.PIPE, stderr=open(work / "keyholder.log", "w"), text=True)
    try:
        addr = kh.stdout.readline().strip().rsplit(" ", 1)[-1]
        check("the key holder started", ":" in addr, addr)
        for who in ["guest", "owner", "coordinator"]:
            err, reply = call(channel(fed, who, addr, "keyholder"), "KeyHolder", "GetPublicKey")
            check(f"grpc-python as `{who}` completes mutual TLS and reads the public key",
                  err is None and len(reply) > 100, f"{err.code() if err else len(reply)} {err.details() if err else 'bytes'}")
        err, _ = call(channel(fed, "guest", addr, "keyholder"), "KeyHolder", "Unseal", b"\x12" + b"\x00")
        check("an Unseal from a node is refused by its role (NET-001)",
              err is not None and err.code() == grpc.StatusCode.PERMISSION_DENIED and err.details().startswith("NET-001"),
              err.details() if err else "accepted")
        # A client with the wrong server name is refused by its own TLS check.
        err, _ = call(channel(fed, "guest", addr, "coordinator"), "KeyHolder", "GetPublicKey")
        check("the server's certificate name is checked", err is not None and err.code() == grpc.StatusCode.UNAVAILABLE)
    finally:
        kh.kill()
        kh.wait()
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
