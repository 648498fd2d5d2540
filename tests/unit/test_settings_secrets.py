"""Settings and secrets: errors never quote a value, production refuses weak keys."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from infrastructure.settings import ConfigurationError, entropy_bits, load_settings
from tests.conftest import signing_key_file

CIPHER_SECRET = "c1pher-VALUE-that-must-never-show-9f8e7d"
JWT_SECRET = "jwt-VALUE-that-must-never-show-0a1b2c3d4e5f"


def _strong() -> str:
    return secrets.token_urlsafe(48)


def _production(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "env": "production",
        "var_dir": tmp_path,
        "database_url": "postgresql://vigil@db/vigil?sslmode=verify-full",
        "redis_url": "rediss://cache:6379/0",
        "kafka_security_protocol": "SSL",
        "jwt_secret": _strong(),
        "jwt_hs256_in_production": True,
        "audit_mac_key": _strong(),
        "cipher_key": _strong(),
        "metrics_token": _strong(),
        "signing_key_file": signing_key_file(tmp_path),
    }
    values.update(overrides)
    return values


def test_a_settings_error_names_the_setting_but_never_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_JWT_KEYS", f'["{JWT_SECRET}"]')
    with pytest.raises(ConfigurationError) as refusal:
        load_settings(var_dir=tmp_path, cipher_key=[CIPHER_SECRET], jwt_lifetime_max_s="x")
    message = str(refusal.value)
    assert "VIGIL_JWT_KEYS" in message
    assert "VIGIL_CIPHER_KEY" in message
    assert "VIGIL_JWT_LIFETIME_MAX_S" in message
    for secret in (CIPHER_SECRET, JWT_SECRET, "c1pher", "0a1b2c", "input_value"):
        assert secret not in message
    assert refusal.value.__cause__ is None, "the pydantic error (with the values) is not chained"


def test_production_accepts_random_keys(tmp_path: Path) -> None:
    settings = load_settings(**_production(tmp_path))
    assert settings.env == "production"
    assert not settings.docs_served()


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("jwt_secret", "a" * 64, "random"),
        ("jwt_secret", "ab" * 32, "random"),
        ("jwt_secret", "Short-But-Random-1", "at least 32"),
        ("audit_mac_key", "x", "at least 32"),
        ("audit_mac_key", "0123" * 10, "random"),
        ("cipher_key", "A" * 44, "random"),
        ("metrics_token", "m" * 40, "random"),
    ],
)
def test_production_refuses_a_weak_key_naming_the_setting_not_the_key(
    tmp_path: Path, setting: str, value: str, words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words) as refusal:
        load_settings(**_production(tmp_path, **{setting: value}))
    assert value not in str(refusal.value)


def test_production_refuses_to_serve_metrics_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="VIGIL_METRICS_TOKEN"):
        load_settings(**_production(tmp_path, metrics_token=None))


def test_development_accepts_any_key_and_serves_docs(tmp_path: Path) -> None:
    settings = load_settings(var_dir=tmp_path, jwt_secret="a", audit_mac_key="b")
    assert settings.docs_served()
    assert load_settings(var_dir=tmp_path, api_docs=False).docs_served() is False


def test_docs_are_served_in_production_only_when_asked_for(tmp_path: Path) -> None:
    assert load_settings(**_production(tmp_path, api_docs=True)).docs_served()


def test_the_entropy_estimate_scores_repetition_low_and_random_keys_high() -> None:
    assert entropy_bits("a" * 64) == 0
    assert entropy_bits("ab" * 32) == 64
    assert entropy_bits(secrets.token_hex(32)) > 200
    assert entropy_bits(secrets.token_urlsafe(32)) > 150


def test_production_refuses_hs256_tokens_unless_waived(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="refuses HS256"):
        load_settings(**_production(tmp_path, jwt_hs256_in_production=False))


def test_production_takes_the_identity_providers_keys_without_any_hs256_key(
    tmp_path: Path,
) -> None:
    values = _production(tmp_path, jwt_hs256_in_production=False, jwt_secret=None)
    with pytest.raises(ConfigurationError, match="VIGIL_JWKS_URL"):
        load_settings(**values)
    with pytest.raises(ConfigurationError, match="https"):
        load_settings(**{**values, "jwks_url": "http://idp.bank.example/jwks"})
    settings = load_settings(
        **{**values, "jwks_url": "https://idp.bank.example/jwks", "jwt_algorithms": ["RS256"]}
    )
    assert settings.hs256_keys() == {}, "no development key in production"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"kafka_security_protocol": "PLAINTEXT"}, "Kafka"),
        ({"database_url": "postgresql://vigil@db/vigil"}, "PostgreSQL"),
        ({"redis_url": "redis://cache:6379/0"}, "Redis"),
    ],
)
def test_production_needs_transport_tls_unless_waived(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"TLS to {named}"):
        load_settings(**_production(tmp_path, **change))
    waived = load_settings(**_production(tmp_path, tls_required=False, **change))
    assert waived.plaintext_transports() == [named]


def test_kafka_sasl_needs_its_mechanism_user_and_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="VIGIL_KAFKA_SASL_MECHANISM"):
        load_settings(var_dir=tmp_path, kafka_security_protocol="SASL_SSL")
    load_settings(
        var_dir=tmp_path,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="vigil",
        kafka_sasl_password="secret",
    )


def test_production_names_everything_it_lacks_in_one_error(tmp_path: Path) -> None:
    """Not one missing item per attempt: an operator fixes the whole list at once."""
    bare = {"env": "production", "var_dir": tmp_path, "database_url": "postgresql://db/vigil"}
    with pytest.raises(ConfigurationError) as refusal:
        load_settings(**bare)
    message = str(refusal.value)
    for named in (
        "VIGIL_JWKS_URL",
        "VIGIL_AUDIT_MAC_KEY",
        "VIGIL_CIPHER_KEY",
        "VIGIL_METRICS_TOKEN",
        "VIGIL_SIGNING_KEY_FILE",
        "TLS to Kafka, PostgreSQL",
        "VIGIL_TLS_REQUIRED=false",
    ):
        assert named in message, (named, message)
    assert message.count("production needs") == 1


def test_production_needs_a_signing_key_file_that_exists(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="VIGIL_SIGNING_KEY_FILE"):
        load_settings(**_production(tmp_path, signing_key_file=None))
    with pytest.raises(ConfigurationError, match="no file at"):
        load_settings(**_production(tmp_path, signing_key_file=tmp_path / "absent.pem"))
