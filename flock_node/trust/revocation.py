"""The revocation list: CNs the CA has revoked, with a version, signed by the CA key.

Nodes keep the newest list they have verified (in their state dir), pass its version in
heartbeats and fetch a newer one from whoever has it: a signed list is its own proof, so it
may travel through any node. Pure apart from `load`/`save`.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec


class RevocationList(msgspec.Struct, array_like=True):
    version: int
    revoked: list[str]  # certificate CNs, e.g. "node:web-1"
    issued_at: float


class Signed(msgspec.Struct, array_like=True):
    payload: bytes  # msgpack of a RevocationList
    sig: bytes  # ECDSA-SHA256 by the CA key


EMPTY = RevocationList(0, [], 0.0)


class RevocationError(ValueError):
    """A list that is not signed by our CA, or not a list at all."""


def sign(key: ec.EllipticCurvePrivateKey, version: int, revoked: list[str],
         now: float | None = None) -> bytes:
    """A signed list, as bytes that travel and are stored as they are."""
    # cryptography (11 MB) is imported where a signature is made or checked: an agent on a
    # flock key never gets here and never loads it.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = msgspec.msgpack.encode(
        RevocationList(version, sorted(set(revoked)), time.time() if now is None else now))
    return msgspec.msgpack.encode(Signed(payload, key.sign(payload, ec.ECDSA(hashes.SHA256()))))


def verify(ca_cert: x509.Certificate, blob: bytes) -> RevocationList:
    """The list in `blob` if our CA signed it; RevocationError otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        signed = msgspec.msgpack.decode(blob, type=Signed)
        pub = ca_cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey):
            raise RevocationError("the CA key is not an ECDSA key")
        pub.verify(signed.sig, signed.payload, ec.ECDSA(hashes.SHA256()))
        return msgspec.msgpack.decode(signed.payload, type=RevocationList)
    except InvalidSignature:
        raise RevocationError("revocation list not signed by this flock's CA") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise RevocationError(f"not a revocation list: {e}") from None


def load(path: Path, ca_cert: x509.Certificate) -> tuple[RevocationList, bytes | None]:
    """The persisted list (EMPTY if none, or one that no longer verifies)."""
    try:
        blob = path.read_bytes()
    except OSError:
        return EMPTY, None
    try:
        return verify(ca_cert, blob), blob
    except RevocationError:
        return EMPTY, None


def save(path: Path, blob: bytes) -> None:
    """Write atomically: a crash leaves the old list or the new one, never half of one."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
