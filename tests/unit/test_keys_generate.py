"""`vigil keys generate`: fresh production secrets as files a production process starts with,
private to their owner, never overwritten, made without any setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infrastructure.audit.signing import public_keys, signing_key
from infrastructure.settings import load_settings
from interfaces.cli.commands.keys import ENV_FILE, generate_keys
from interfaces.cli.main import main


def _env(path: Path) -> dict[str, Any]:
    """The env file as settings: what the environment would give (JSON decoded)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines())
    values: dict[str, Any] = {n.removeprefix("VIGIL_").lower(): v for n, v in pairs}
    values["jwt_keys"] = json.loads(values["jwt_keys"])
    return values


def test_the_keys_start_production_and_are_private(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    signing, public, env_file, metrics_token = generate_keys(keys)
    assert keys.stat().st_mode & 0o777 == 0o700
    for path in (signing, public, env_file, metrics_token):
        assert path.stat().st_mode & 0o777 == 0o600, path
    # Prometheus's bearer file holds exactly the token the processes expect.
    assert metrics_token.read_text() == _env(env_file)["metrics_token"]
    settings = load_settings(
        env="production",
        var_dir=tmp_path,
        database_url="postgresql://vigil@db/vigil",
        tls_required=False,
        jwt_hs256_in_production=True,
        signing_key_file=signing,
        signing_public_keys_dir=public.parent,
        **_env(env_file),
    )
    key = signing_key(settings)
    assert public.stem in public_keys(settings)
    assert key.public_key() == public_keys(settings)[public.stem]


def test_nothing_is_overwritten(tmp_path: Path) -> None:
    generate_keys(tmp_path / "keys")
    before = (tmp_path / "keys" / ENV_FILE).read_bytes()
    with pytest.raises(FileExistsError):
        generate_keys(tmp_path / "keys")
    assert (tmp_path / "keys" / ENV_FILE).read_bytes() == before


def test_the_command_runs_where_production_lacks_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIGIL_ENV", "production")
    assert main(["keys", "generate", str(tmp_path / "new")]) == 0
    assert "VIGIL_SIGNING_KEY_FILE" in capsys.readouterr().out
    assert main(["keys", "generate", str(tmp_path / "new")]) == 2  # refused, named
    assert "exists" in capsys.readouterr().err
