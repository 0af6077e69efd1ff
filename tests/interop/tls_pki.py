# SPDX-License-Identifier: MIT
"""Test credentials for the TLS tests, made with GnuTLS's certtool and
psktool in a folder the caller owns:

  DIR/pki/        ca-cert.pem server-cert.pem server-key.pem (the server's
                  --tls-cert folder, qemu/nbdkit layout) + ca-key.pem
  DIR/client/     ca-cert.pem client-cert.pem client-key.pem (libnbd's and
                  qemu's client layout, a certificate signed by the CA)
  DIR/client2/    the same layout, a second client certificate of the CA
                  (the one a revocation list does not name)
  DIR/anon/       ca-cert.pem only (a client without a certificate)
  DIR/other/      ca-cert.pem of an unrelated CA (must fail to verify)
  DIR/keys.psk    alice:<hexkey>        DIR/wrong.psk  alice:<another key>

Run as a script: python3 tls_pki.py DIR."""
import os
import subprocess
import sys


def _run(*args, stdin=None):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   input=stdin)


def _key(path):
    with open(path, "wb") as f:
        f.write(subprocess.run(["certtool", "--generate-privkey", "--key-type=ecdsa"],
                               check=True, capture_output=True).stdout)


def _template(path, text):
    with open(path, "w") as f:
        f.write(text)


def _ca(d, name):
    os.makedirs(d, exist_ok=True)
    _key(f"{d}/ca-key.pem")
    _template(f"{d}/ca.info", f"cn = {name}\nca\ncert_signing_key\nexpiration_days = 3\n")
    _run("certtool", "--generate-self-signed", "--load-privkey", f"{d}/ca-key.pem",
         "--template", f"{d}/ca.info", "--outfile", f"{d}/ca-cert.pem")


def _signed(ca, key, cert, template, text):
    _key(key)
    _template(template, text)
    _run("certtool", "--generate-certificate", "--load-ca-certificate", f"{ca}/ca-cert.pem",
         "--load-ca-privkey", f"{ca}/ca-key.pem", "--load-privkey", key,
         "--template", template, "--outfile", cert)


def make(base):
    pki, client, anon, other = (os.path.join(base, n) for n in ("pki", "client", "anon", "other"))
    _ca(pki, "rblock test CA")
    _signed(pki, f"{pki}/server-key.pem", f"{pki}/server-cert.pem", f"{pki}/server.info",
            "organization = rblock test\ncn = localhost\ndns_name = localhost\n"
            "ip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\n"
            "expiration_days = 3\n")
    os.makedirs(client, exist_ok=True)
    _signed(pki, f"{client}/client-key.pem", f"{client}/client-cert.pem",
            f"{client}/client.info",
            "organization = rblock test\ncn = client\ntls_www_client\nencryption_key\n"
            "signing_key\nexpiration_days = 3\n")
    client2 = os.path.join(base, "client2")
    os.makedirs(client2, exist_ok=True)
    _signed(pki, f"{client2}/client-key.pem", f"{client2}/client-cert.pem",
            f"{client2}/client.info",
            "organization = rblock test\ncn = client2\ntls_www_client\nencryption_key\n"
            "signing_key\nexpiration_days = 3\n")
    os.makedirs(anon, exist_ok=True)
    for d in (client, client2, anon):
        with open(f"{pki}/ca-cert.pem", "rb") as src, open(f"{d}/ca-cert.pem", "wb") as dst:
            dst.write(src.read())
    _ca(other, "some other CA")
    for name in ("keys.psk", "wrong.psk"):
        _run("psktool", "-u", "alice", "-p", os.path.join(base, name))
    return base


if __name__ == "__main__":
    make(sys.argv[1])
