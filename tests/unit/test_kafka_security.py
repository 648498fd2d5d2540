"""Every Kafka client Vigil makes takes the broker's TLS and SASL settings.

The embedded test broker, tansu 0.6.0, is not used here. Its build refuses --cert with --key,
and the TLS listener it starts with --cert alone answered no TLS handshake of aiokafka's.
With --authentication it speaks SCRAM (a client configured as below gets its server-first
message, an unauthenticated one is refused), but its users can only be created through
AlterUserScramCredentials, a request aiokafka cannot send, so no client can log in to it.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infrastructure.kafka.clients import new_admin, new_consumer, new_producer, security_options
from infrastructure.settings import load_settings


def _ca_file(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _settings(tmp_path: Path, **overrides: Any) -> Any:
    return load_settings(var_dir=tmp_path, kafka_bootstrap="127.0.0.1:19092", **overrides)


def test_plaintext_is_said_explicitly(tmp_path: Path) -> None:
    assert security_options(_settings(tmp_path)) == {"security_protocol": "PLAINTEXT"}


def test_sasl_over_tls_carries_the_ca_and_the_credentials(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="vigil-relay",
        kafka_sasl_password="s3cret-value",
        kafka_ssl_cafile=_ca_file(tmp_path),
    )
    options = security_options(settings)
    context = options.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert len(context.get_ca_certs()) == 1
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "vigil-relay",
        "sasl_plain_password": "s3cret-value",
    }


def test_every_client_factory_applies_them(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="vigil",
        kafka_sasl_password="pw",
        kafka_ssl_cafile=_ca_file(tmp_path),
    )

    async def made() -> list[Any]:
        # aiokafka builds its clients inside a running loop; none is started here.
        producer = new_producer(settings, "p")
        consumer = new_consumer(settings, "t", "g", "c", 10)
        admin = new_admin(settings, "a")
        clients = [producer.client, consumer._client, admin._client]
        await producer.stop()  # never started: only closes what the constructor opened
        await consumer.stop()
        await admin.close()
        return clients

    for client in asyncio.run(made()):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "PLAIN"
        assert client._sasl_plain_username == "vigil"
        assert isinstance(client._ssl_context, ssl.SSLContext)
