"""The flock CA: an ECDSA P-256 key and certificate in a directory of its own, the
certificates it issued and the names it revoked.

    CA_DIR/ca.key (0600)  ca.crt  index.json  revoked.list (the signed revocation list)
    OUT/ca.crt  identity.crt  identity.key (0600)   ← `issue`: a ready --tls-dir

A certificate's CN says who and in which role (`node:web-1`, see identity.py); every one
carries the shared DNS name `node.flock`, which dialers check instead of the address.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flock_node.trust import revocation
from flock_node.trust.identity import ROLES, SHARED_SAN, common_name

CA_KEY, CA_CERT, INDEX, REVOKED = "ca.key", "ca.crt", "index.json", "revoked.list"
ID_CERT, ID_KEY = "identity.crt", "identity.key"
CA_DAYS = 3650
DEFAULT_DAYS = 365


class CaError(Exception):
    """A CA command cannot do what was asked; the message says why."""


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)  # an existing file keeps its mode otherwise


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init(ca_dir: Path) -> Path:
    """Make a new CA in `ca_dir` (refused if one is there: its certificates would die)."""
    if (ca_dir / CA_KEY).exists():
        raise CaError(f"a CA already exists in {ca_dir} (remove it first to start over; every "
                      "certificate it issued would stop working)")
    ca_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ca_dir, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"flock CA {os.urandom(4).hex()}")])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(ca_dir / CA_KEY, _pem_key(key), private=True)
    _write(ca_dir / CA_CERT, _pem_cert(cert))
    _save_index(ca_dir, {"issued": {}, "revoked": {}, "version": 0})
    return ca_dir


@dataclass
class Ca:
    dir: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    index: dict[str, Any]


def load(ca_dir: Path) -> Ca:
    """The CA in `ca_dir`, or CaError naming what is missing."""
    if not (ca_dir / CA_KEY).exists():
        raise CaError(f"no CA in {ca_dir}: make one with `flockctl ca init` (or pass --ca-dir)")
    try:
        key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), None)
        cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
        index = json.loads((ca_dir / INDEX).read_text())
    except (OSError, ValueError) as e:
        raise CaError(f"the CA in {ca_dir} cannot be read: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{ca_dir / CA_KEY} is not an ECDSA key")
    return Ca(ca_dir, key, cert, index)


def _save_index(ca_dir: Path, index: dict[str, Any]) -> None:
    tmp = ca_dir / (INDEX + ".tmp")
    _write(tmp, json.dumps(index, indent=2, sort_keys=True).encode(), private=True)
    os.replace(tmp, ca_dir / INDEX)


def issue(ca_dir: Path, name: str, role: str, out: Path, days: float = DEFAULT_DAYS,
          not_before: dt.datetime | None = None) -> Path:
    """Issue a certificate for `name` in `role` into `out` (ca.crt, identity.crt,
    identity.key 0600): a directory ready to be a --tls-dir."""
    if role not in ROLES:
        raise CaError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    try:
        cn = common_name(role, name)
    except ValueError as e:
        raise CaError(str(e)) from None
    ca = load(ca_dir)
    taken = ca.index["issued"].get(name)
    if taken is not None:
        state = "revoked" if name in ca.index["revoked"] else "issued"
        raise CaError(f"the name {name!r} is taken: a {taken['role']} certificate was {state} "
                      "for it (names are unique in a flock, across roles)")
    if (out / ID_KEY).exists():
        raise CaError(f"{out / ID_KEY} exists: choose another --out directory")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SHARED_SAN)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "ca.crt", _pem_cert(ca.cert))
    _write(out / ID_CERT, _pem_cert(cert))
    _write(out / ID_KEY, _pem_key(key), private=True)
    ca.index["issued"][name] = {
        "role": role, "cn": cn, "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.timestamp(), "issued_at": time.time(),
    }
    _save_index(ca_dir, ca.index)
    return out


def entries(ca_dir: Path) -> list[dict[str, Any]]:
    """What the CA issued, with each one's state (valid, expired, revoked)."""
    ca = load(ca_dir)
    now = time.time()
    rows = []
    for name, e in sorted(ca.index["issued"].items()):
        state = ("revoked" if name in ca.index["revoked"]
                 else "expired" if e["not_after"] < now else "valid")
        rows.append({"name": name, **e, "state": state,
                     "revoked_at": ca.index["revoked"].get(name)})
    return rows


def revoke(ca_dir: Path, name: str) -> bytes:
    """Add `name` to the revocation list; the new list, signed, with a higher version."""
    ca = load(ca_dir)
    issued = ca.index["issued"].get(name)
    if issued is None:
        known = ", ".join(sorted(ca.index["issued"])) or "none"
        raise CaError(f"{name!r} was never issued by the CA in {ca_dir} (issued: {known})")
    if name not in ca.index["revoked"]:
        ca.index["revoked"][name] = time.time()
        ca.index["version"] = int(ca.index.get("version", 0)) + 1
        _save_index(ca_dir, ca.index)
    return signed_list(ca)


def signed_list(ca: Ca) -> bytes:
    """The CA's current revocation list, signed (also kept as CA_DIR/revoked.list)."""
    cns = [ca.index["issued"][n]["cn"] for n in ca.index["revoked"] if n in ca.index["issued"]]
    blob = revocation.sign(ca.key, int(ca.index.get("version", 0)), cns)
    _write(ca.dir / REVOKED, blob)
    return blob
