"""A throw-away PKI for TLS tests, made with the ``openssl`` command line.

``cryptography`` is not a dependency of theranode, and Debian always ships
``openssl``: :func:`make_pki` writes a CA, a server certificate for
127.0.0.1/localhost, a client certificate signed by the CA, and a client
certificate signed by a second, untrusted CA (PEM, unencrypted keys, valid
for two days).

References
----------
DICOM PS3.15 Annex B.1 (Basic TLS Secure Transport Connection Profile) and
B.9 (BCP 195 profiles): mutual authentication with X.509 certificates.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files :func:`make_pki` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, check=False,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {done.stderr}")


def _authority(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "2", "-subj", f"/CN=theranode test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(folder: Path, name: str, authority: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    cert, key, request = folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.csr"
    extensions = folder / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request,
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", request, "-CA", authority[0], "-CAkey", authority[1],
             "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", extensions)
    return cert, key


def make_pki(folder: Path) -> Pki:
    """Write the CA, server, client and untrusted-client key pairs into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _authority(folder, "ca")
    rogue_ca = _authority(folder, "rogue-ca")
    server = _leaf(folder, "server", ca, "serverAuth")
    client = _leaf(folder, "client", ca, "clientAuth")
    rogue = _leaf(folder, "rogue-client", rogue_ca, "clientAuth")
    return Pki(ca[0], server[0], server[1], client[0], client[1], rogue[0], rogue[1])
