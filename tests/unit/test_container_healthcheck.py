"""The image's health check probes each process's /health/ready on its own port."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vigil_healthcheck", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "url"),
    [
        (["api", "command"], "http://127.0.0.1:8000/health/ready"),
        (["api", "query", "--port", "9001"], "http://127.0.0.1:9001/health/ready"),
        (["relay"], "http://127.0.0.1:9102/health/ready"),
        (["workers", "--metrics-port=9200"], "http://127.0.0.1:9200/health/ready"),
        (["case-opener"], "http://127.0.0.1:9103/health/ready"),
        (["project", "balances"], None),
        (["token", "issue"], None),
    ],
)
def test_each_process_is_probed_where_it_answers(
    args: list[str], url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("VIGIL_HOST", "VIGIL_COMMAND_PORT", "VIGIL_QUERY_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("RELAY", "WORKERS", "CASE_OPENER"):
        monkeypatch.delenv(f"VIGIL_{name}_METRICS_PORT", raising=False)
    assert _module().target_url(args) == url
