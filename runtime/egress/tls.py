"""Each allowlist agent's own certificate authority, for the hosts its egress proxy intercepts.

Interception is opt-in per host (``Policy.intercept``): only there does the proxy terminate TLS,
with a certificate for that host signed by the agent's CA, so that it can add a credential header
at the edge. The CA's key stays on the host, encrypted under the credential store's master key
(a store file of its own, ``egress/ca-keys.json``); its certificate (public) is installed in the
machine's trust store. Leaf certificates live in memory only and are cached per host.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..credentials import CredentialStore
from ..errors import SecretNotFound

CA_DAYS = 3650
LEAF_DAYS = 30
LEAF_CACHE = 256  # leaf contexts kept per daemon


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class AgentAuthorities:
    """Make, keep and use one CA per agent; hand out server contexts for intercepted hosts."""

    def __init__(self, store: CredentialStore) -> None:
        self._store = store
        self._cas: dict[str, tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = {}
        self._leaves: dict[tuple[str, str], ssl.SSLContext] = {}

    def certificate_pem(self, agent_id: str) -> bytes:
        """The agent's CA certificate (PEM), made on first use."""
        _key, cert = self._ca(agent_id)
        return cert.public_bytes(serialization.Encoding.PEM)

    def server_context(self, agent_id: str, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for ``host`` signed by the agent's CA."""
        cached = self._leaves.get((agent_id, host))
        if cached is not None:
            return cached
        ca_key, ca_cert = self._ca(agent_id)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="spinup-leaf-") as directory:
            path = Path(directory) / "leaf.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(
                    key.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                    )
                )
                out.write(cert.public_bytes(serialization.Encoding.PEM))
            context.load_cert_chain(path)
        if len(self._leaves) >= LEAF_CACHE:
            self._leaves.pop(next(iter(self._leaves)))
        self._leaves[(agent_id, host)] = context
        return context

    def _ca(self, agent_id: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        cached = self._cas.get(agent_id)
        if cached is not None:
            return cached
        name = f"CA_{agent_id}"
        try:
            key_pem, cert_pem = self._store.get(name).split("\n--\n", 1)
            loaded = serialization.load_pem_private_key(key_pem.encode(), password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            pair = (loaded, x509.load_pem_x509_certificate(cert_pem.encode()))
        except SecretNotFound:
            pair = self._make_ca(agent_id)
            key_pem = (
                pair[0]
                .private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
                .decode()
            )
            cert_pem = pair[1].public_bytes(serialization.Encoding.PEM).decode()
            self._store.set(name, f"{key_pem}\n--\n{cert_pem}")
        self._cas[agent_id] = pair
        return pair

    @staticmethod
    def _make_ca(agent_id: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = _name(f"Spinup egress CA for agent {agent_id}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert
