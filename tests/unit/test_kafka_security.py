"""Every Kafka client Vigil makes takes the broker's TLS and SASL settings, MSK's IAM
tokens included.

The embedded test broker, tansu 0.6.0, is not used here. Its build refuses --cert with --key,
and the TLS listener it starts with --cert alone answered no TLS handshake of aiokafka's.
With --authentication it speaks SCRAM (a client configured as below gets its server-first
message, an unauthenticated one is refused), but its users can only be created through
AlterUserScramCredentials, a request aiokafka cannot send, so no client can log in to it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infrastructure.kafka.clients import new_admin, new_consumer, new_producer, security_options
from infrastructure.settings import ConfigurationError, load_settings


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


def test_msk_iam_needs_tls_and_a_region(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs SASL_SSL"):
        _settings(tmp_path, kafka_security_protocol="SASL_PLAINTEXT", **_iam("eu-west-2"))
    with pytest.raises(ConfigurationError, match="VIGIL_KAFKA_AWS_REGION"):
        _settings(tmp_path, kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="AWS_MSK_IAM")
    with pytest.raises(ConfigurationError, match=r"(?i)kafka_aws_region"):
        _settings(tmp_path, kafka_security_protocol="SASL_SSL", **_iam("eu west 2"))


def _iam(region: str) -> dict[str, Any]:
    return {"kafka_sasl_mechanism": "AWS_MSK_IAM", "kafka_aws_region": region}


def test_msk_iam_signs_a_connect_request_with_the_processs_aws_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Static credentials: the signer signs locally, nothing is fetched.
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAVIGILTESTKEY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "vigil-test-secret-not-a-real-one")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = _settings(tmp_path, kafka_security_protocol="SASL_SSL", **_iam("eu-west-2"))
    options = security_options(settings)
    assert options["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "sasl_plain_password" not in options
    provider = options["sasl_oauth_token_provider"]

    async def twice() -> tuple[str, str]:
        return await provider.token(), await provider.token()

    first, again = asyncio.run(twice())
    assert again == first  # one token serves every connection until near its expiry
    url = urlparse(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode())
    query = parse_qs(url.query)
    assert url.hostname == "kafka.eu-west-2.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIAVIGILTESTKEY0001/")
    assert "/eu-west-2/kafka-cluster/aws4_request" in query["X-Amz-Credential"][0]
    assert query["X-Amz-Signature"][0]
