"""A node's own statement (`Alive`: who, where, which process, its facts), signed so that
others can pass it on and still be believed (SPEC: a node is believed only about itself).

- With the flock key: an HMAC over the statement. Any key holder is trusted as anyone
  (README, Security), so this keeps out strangers, as every frame's HMAC does.
- On TLS: the node's certificate and its ECDSA signature over the statement; believed when
  the certificate is the flock CA's, for `node:NAME`, not expired nor revoked.
- Neither (ipc without a key, `--insecure`): nothing to check, the statement is believed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from flock_node.membership.messages import Alive
from flock_node.trust.identity import NODE, common_name
from flock_node.trust.tls import TlsIdentity

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

_enc = msgspec.msgpack.Encoder()
_CACHE = 8192  # statements checked once stay checked (a push-pull repeats the whole table)


class _Sig(msgspec.Struct, array_like=True):
    cert: bytes  # DER
    sig: bytes  # ECDSA over the statement


def statement_bytes(a: Alive) -> bytes:
    """What a signature covers: the statement without its signature."""
    return b"flock-swim-alive\x00" + _enc.encode(
        Alive(a.node, a.incarnation, a.instance, a.addr, a.version, a.record))


def _with_sig(a: Alive, sig: bytes) -> Alive:
    return Alive(a.node, a.incarnation, a.instance, a.addr, a.version, a.record, sig)


class Notary:
    """`sign` our statements, `vouch` for others' (the `Swim` hooks)."""

    def __init__(self, key: bytes | None = None, tls: TlsIdentity | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.tls = tls
        self.clock = clock
        self._seen: dict[bytes, bool] = {}  # hash of (statement, signature) → verdict
        self._certs: dict[bytes, tuple[str, float, ec.EllipticCurvePublicKey] | None] = {}
        self._own: _Sig | None = None
        self._priv: ec.EllipticCurvePrivateKey | None = None
        if tls is not None:
            # cryptography only on TLS (imported here): an agent on a flock key never loads it.
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            cert = x509.load_pem_x509_certificate(tls.cert_pem.encode())
            priv = serialization.load_pem_private_key(tls.key_pem.encode(), None)
            if not isinstance(priv, ec.EllipticCurvePrivateKey):
                raise ValueError("the node's key is not an EC key")
            self._priv = priv
            self._own = _Sig(cert.public_bytes(serialization.Encoding.DER), b"")

    def sign(self, a: Alive) -> Alive:
        """Our statement with its signature."""
        data = statement_bytes(a)
        if self._priv is not None and self._own is not None:
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import ec

            sig = self._priv.sign(data, ec.ECDSA(hashes.SHA256()))
            return _with_sig(a, _enc.encode(_Sig(self._own.cert, sig)))
        if self.key:
            return _with_sig(a, hmac.new(self.key, data, hashlib.sha256).digest()[:16])
        return a

    def vouch(self, a: Alive) -> bool:
        """Does `a` carry its node's valid signature?"""
        if self.tls is None and not self.key:
            return True
        # The whole statement is the key: a signature is good only for what it signed
        # (the same node, incarnation and version at another address is a forgery).
        data = statement_bytes(a)
        k = hashlib.blake2b(data + a.sig, digest_size=16).digest()
        got = self._seen.get(k)
        if got is None:
            got = self._check(a, data)
            if len(self._seen) >= _CACHE:
                self._seen.clear()
            self._seen[k] = got
        return got

    def vouch_many(self, alives: list[Alive]) -> list[bool]:
        """`vouch` for each."""
        return [self.vouch(a) for a in alives]

    def _check(self, a: Alive, data: bytes) -> bool:
        if self.tls is None:
            assert self.key
            good = hmac.new(self.key, data, hashlib.sha256).digest()[:16]
            return hmac.compare_digest(good, a.sig)
        try:
            s = msgspec.msgpack.decode(a.sig, type=_Sig)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signer = self._signer(s.cert)
        if signer is None:
            return False
        cn, not_after, pub = signer
        if cn != common_name(NODE, a.node) or self.clock() > not_after:
            return False
        if not self.tls.gate.allows(cn):
            return False
        try:
            pub.verify(s.sig, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def _signer(self, der: bytes) -> tuple[str, float, ec.EllipticCurvePublicKey] | None:
        """The CN, expiry and key of a certificate the flock CA issued; None otherwise."""
        if der in self._certs:
            return self._certs[der]
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ec

        got = None
        assert self.tls is not None
        try:
            cert = x509.load_der_x509_certificate(der)
            ca_key = self.tls.ca_cert.public_key()
            algo = cert.signature_hash_algorithm
            if isinstance(ca_key, ec.EllipticCurvePublicKey) and algo is not None:
                ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algo))
                cns = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
                pub = cert.public_key()
                if cns and isinstance(pub, ec.EllipticCurvePublicKey):
                    got = (str(cns[0].value), cert.not_valid_after_utc.timestamp(), pub)
        except (ValueError, InvalidSignature, TypeError):
            got = None
        if len(self._certs) >= 1024:
            self._certs.clear()
        self._certs[der] = got
        return got
