"""A --tls-dir (ca.crt, identity.crt, identity.key, as `flockctl ca issue` writes it) turned
into nng TLS configurations, and the gate every TLS connection passes: a flock identity, not
revoked. Mutual TLS with AUTH_MODE_REQUIRED on both sides; dialers check the shared DNS name
every certificate carries (`node.flock`), so any node is reachable by address."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pynng

from flock_node import paths
from flock_node.trust import revocation
from flock_node.trust.identity import NODE, SHARED_SAN, Caller, parse_cn

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("flock.trust")


class TlsError(Exception):
    """A --tls-dir that cannot be used; the message says what to do."""


def tls_dir(override: str | None = None) -> Path:
    """--tls-dir, then FLOCK_TLS_DIR, then `<config dir>/tls`."""
    return Path(override or os.environ.get("FLOCK_TLS_DIR") or paths.config_dir() / "tls")


@dataclass
class TlsIdentity:
    """Who we are (our certificate) and whom we trust (the flock CA)."""

    dir: Path
    ca_pem: str
    cert_pem: str
    key_pem: str
    ca_cert: x509.Certificate
    me: Caller
    not_after: float
    gate: Gate = field(init=False)

    def __post_init__(self) -> None:
        self.gate = Gate(self.ca_cert)

    def config(self, server: bool) -> pynng.TLSConfig:
        """A fresh nng TLS configuration for a listener (`server`) or a dialer."""
        mode = pynng.TLSConfig.MODE_SERVER if server else pynng.TLSConfig.MODE_CLIENT
        return pynng.TLSConfig(
            mode, server_name=None if server else SHARED_SAN, ca_string=self.ca_pem,
            own_cert_string=self.cert_pem, own_key_string=self.key_pem,
            auth_mode=pynng.TLSConfig.AUTH_MODE_REQUIRED)


def load_identity(directory: Path) -> TlsIdentity:
    """Read a --tls-dir; TlsError names the missing or broken file."""
    # Imported here, not at the top: an agent on a flock key never loads cryptography.
    from cryptography import x509

    files = {}
    for f in ("ca.crt", "identity.crt", "identity.key"):
        p = directory / f
        try:
            files[f] = p.read_text()
        except OSError as e:
            raise TlsError(f"cannot read {p} ({e.strerror}): make a TLS directory with "
                           "`flockctl ca issue NAME --role ... --out DIR` and pass --tls-dir "
                           "DIR (or set FLOCK_TLS_DIR)") from None
    key_path = directory / "identity.key"
    if key_path.stat().st_mode & 0o077:
        raise TlsError(f"{key_path} can be read by others; run `chmod 600 {key_path}`")
    try:
        ca_cert = x509.load_pem_x509_certificate(files["ca.crt"].encode())
        cert = x509.load_pem_x509_certificate(files["identity.crt"].encode())
    except ValueError as e:
        raise TlsError(f"a certificate in {directory} cannot be read: {e}") from None
    cns = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    me = parse_cn(str(cns[0].value)) if cns else None
    if me is None:
        raise TlsError(f"{directory / 'identity.crt'} is not a flock identity (its common "
                       "name is not role:name)")
    return TlsIdentity(directory, files["ca.crt"], files["identity.crt"], files["identity.key"],
                       ca_cert, me, cert.not_valid_after_utc.timestamp())


def check_node_identity(ident: TlsIdentity, name: str) -> str | None:
    """Why this identity cannot run the node `name`, or None if it can."""
    if ident.me.role != NODE:
        return (f"the certificate in {ident.dir} is an {ident.me.role}'s ({ident.me.cn}), "
                f"not a node's: issue one with `flockctl ca issue {name} --role node`")
    if ident.me.name != name:
        return (f"the certificate in {ident.dir} is for node {ident.me.name!r}, not {name!r}")
    if ident.not_after < time.time():
        return f"the certificate in {ident.dir} expired; issue a new one"
    return None


class Gate:
    """Which peers a TLS connection accepts: a flock identity whose CN is not revoked.
    Holds the newest revocation list verified against our CA; `listeners` hear of a new one
    (the transport closes the revoked identities' connections)."""

    def __init__(self, ca_cert: x509.Certificate):
        self.ca_cert = ca_cert
        self.path: Path | None = None
        self.current = revocation.EMPTY
        self.blob: bytes | None = None
        self.revoked: frozenset[str] = frozenset()
        self.listeners: list[Callable[[], None]] = []

    @property
    def version(self) -> int:
        return self.current.version

    def persist_in(self, path: Path) -> None:
        """Keep the list in `path` (loaded now, rewritten with each newer one)."""
        self.path = path
        lst, blob = revocation.load(path, self.ca_cert)
        if lst.version > self.current.version:
            self._use(lst, blob)

    def allows(self, cn: str | None) -> bool:
        """May a peer with this certificate CN talk to us?"""
        return cn is not None and parse_cn(cn) is not None and cn not in self.revoked

    def offer(self, blob: bytes) -> bool:
        """Take a signed list if it is newer than ours; True if it was. Raises
        RevocationError for one our CA did not sign."""
        lst = revocation.verify(self.ca_cert, blob)
        if lst.version <= self.current.version:
            return False
        if self.path is not None:
            revocation.save(self.path, blob)
        self._use(lst, blob)
        log.warning("revocation list version %d: %s revoked", lst.version,
                    ", ".join(lst.revoked) or "nobody")
        for cb in list(self.listeners):
            cb()
        return True

    def _use(self, lst: revocation.RevocationList, blob: bytes | None) -> None:
        self.current, self.blob, self.revoked = lst, blob, frozenset(lst.revoked)
