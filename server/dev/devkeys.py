"""Development key material for the fake gateways and the senders that talk to them.

Everything here is generated locally and is only good for talking to the fakes:

- a private CA and a server certificate for 127.0.0.1/localhost (the fake APNs' TLS),
- an APNs provider key (ES256, the ``.p8`` Apple hands out) with a key id and team id,
- a Google service-account key file whose ``token_uri`` points at the fake FCM, so
  google-auth's ordinary service-account flow works against it unchanged.

Files are created once in a directory and reused, so ``make run`` twice and the
tests see stable material.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

DEV_APNS_KEY_ID = "GEOPUSHDEV"
DEV_APNS_TEAM_ID = "GEOPUSHTEAM"
DEV_APNS_TOPIC = "org.geopush.app"
DEV_FCM_PROJECT = "geopush-dev"


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class ApnsKey:
    key_file: Path
    key_id: str
    team_id: str
    topic: str


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_private(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_tls(directory: Path) -> TlsFiles:
    """A CA and a server certificate valid for 127.0.0.1, ::1 and localhost."""
    files = TlsFiles(
        directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    )
    if files.ca_cert.exists() and files.server_cert.exists() and files.server_key.exists():
        return files
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "geopush development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.server_key, _pem_private(server_key))
    return files


def ensure_apns_key(directory: Path) -> ApnsKey:
    """An ES256 provider key in Apple's .p8 (PKCS#8 PEM) form."""
    key = ApnsKey(
        directory / f"AuthKey_{DEV_APNS_KEY_ID}.p8", DEV_APNS_KEY_ID, DEV_APNS_TEAM_ID,
        DEV_APNS_TOPIC,
    )
    if not key.key_file.exists():
        _write_private(key.key_file, _pem_private(ec.generate_private_key(ec.SECP256R1())))
    return key


def ensure_fcm_service_account(
    directory: Path, token_uri: str, project_id: str = DEV_FCM_PROJECT
) -> Path:
    """A service-account key file in Google's format, its token_uri aimed at the fake.

    The file is rewritten when the token_uri changes (the fake may move ports), keeping
    the same key so a running fake that already trusts it keeps working.
    """
    path = directory / "fcm-service-account.json"
    existing: dict[str, str] = {}
    if path.exists():
        existing = json.loads(path.read_text())
        if existing.get("token_uri") == token_uri and existing.get("project_id") == project_id:
            return path
    private_key = existing.get("private_key") or _pem_private(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ).decode()
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "geopush-dev-key",
        "private_key": private_key,
        "client_email": f"geopush@{project_id}.iam.gserviceaccount.com",
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    _write_private(path, json.dumps(info, indent=2).encode())
    return path


def public_key_pem(private_key_pem: bytes) -> bytes:
    """The public half of a PEM private key (what a gateway needs to verify signatures)."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
