"""Throw-away TLS material for test servers: a CA and a server certificate for
127.0.0.1 / localhost, made with the ``openssl`` command line tool."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["CERT_FILES", "make_certs"]

CERT_FILES = ("ca.crt", "server.crt", "server.key")


def make_certs(directory: str | os.PathLike[str]) -> tuple[str, str, str]:
    """Write a CA and a server key pair into ``directory``; return the paths of
    ``(ca.crt, server.crt, server.key)``."""
    d = Path(directory)
    cnf = d / "openssl.cnf"
    cnf.write_text(
        "[req]\ndistinguished_name = dn\n[dn]\n"
        "[ca]\nbasicConstraints = critical,CA:TRUE\n"
        "keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
        "[server]\nbasicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n"
    )
    ca_file, cert_file, key_file = (str(d / f) for f in CERT_FILES)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    days, conf = ["-days", "3650"], ["-config", str(cnf)]
    ca = ["req", "-x509", *key, *conf, *days, "-extensions", "ca", "-subj", "/CN=redispool CA"]
    csr = ["req", "-new", *key, *conf, "-subj", "/CN=localhost", "-out", "server.csr"]
    crt = ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", *days]
    crt += ["-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-extfile", str(cnf)]
    try:
        for cmd in (
            [*ca, "-keyout", "ca.key", "-out", "ca.crt"],
            [*csr, "-keyout", "server.key"],
            [*crt, "-extensions", "server", "-out", "server.crt"],
        ):
            subprocess.run(["openssl", *cmd], check=True, capture_output=True, cwd=d)
    except FileNotFoundError as exc:
        raise RuntimeError("TLS test servers need the `openssl` command line tool") from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"openssl failed: {exc.stderr.decode(errors='replace')}") from exc

    return ca_file, cert_file, key_file
