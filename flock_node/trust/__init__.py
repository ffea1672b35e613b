"""Identity and trust: the flock CA (ca.py), identities read from certificates
(identity.py), TLS configuration (tls.py), the revocation list (revocation.py), roles and the
policy file (policy.py), and the audit trail (audit.py)."""
