"""TLS certificates for the SuperLink and the owners' SuperNode authentication keys."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindfed.atomic import write_atomically


@dataclass(frozen=True)
class Certificates:
    """Paths of a self-signed CA and a server certificate signed by it (PEM)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's ECDSA P-384 key pair, in OpenSSH format."""

    private_key: Path
    public_key: Path


def make_certificates(
    directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), *, days: int = 365
) -> Certificates:
    """Write a self-signed CA and a server certificate for ``hosts`` into ``directory``.

    Files: ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key`` (keys mode 0600). ``hosts``
    become the server certificate's subject alternative names (IP addresses or DNS names);
    for a SuperLink on another machine include its public name *and* ``127.0.0.1``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("make_certificates needs at least one host")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=days)

    def signed(
        subject: Any,
        issuer: Any,
        key: Any,
        signer: Any,
        *,
        ca: bool,
        extensions: Sequence[Any] = (),
    ) -> Any:
        """A certificate valid from ``not_before`` to ``not_after``: a CA signs certificates,
        a server agrees keys (TLS); both sign."""
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=not ca,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(signer, hashes.SHA384())

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blindfed local CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = signed(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True, extensions=[ca_ski])

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = signed(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]),
        ca_name,
        server_key.public_key(),
        ca_key,
        ca=False,
        extensions=[
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            x509.SubjectAlternativeName(sans),
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
        ],
    )

    pem = serialization.Encoding.PEM
    certs = Certificates(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    for cert, cert_path, key, key_path in (
        (ca_cert, certs.ca_cert, ca_key, certs.ca_key),
        (server_cert, certs.server_cert, server_key, certs.server_key),
    ):
        cert_path.write_bytes(cert.public_bytes(pem))
        private = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_atomically(key_path, private, private=True)
    return certs


def make_node_keys(directory: Path, count: int, *, prefix: str = "owner") -> list[NodeKey]:
    """Write ``count`` SuperNode key pairs ``<prefix>-<i>.key`` / ``<prefix>-<i>.pub``.

    ECDSA on NIST P-384, OpenSSH format (what ``flower-supernode
    --auth-supernode-private-key`` and ``flwr supernode register`` read); the private keys
    are unencrypted, mode 0600. Equivalent to ``ssh-keygen -t ecdsa -b 384 -N ""``.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP384R1())
        node_key = NodeKey(directory / f"{prefix}-{i}.key", directory / f"{prefix}-{i}.pub")
        write_atomically(
            node_key.private_key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            private=True,
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        node_key.public_key.write_bytes(public + f" {prefix}-{i}\n".encode())
        keys.append(node_key)
    return keys
