"""Without the `vigil[embedded]` extra (the production image), `vigil up`'s servers say
what to install instead of failing with an ImportError."""

from __future__ import annotations

import pytest

from infrastructure.ops.embedded import EmbeddedServerError, import_embedded


def test_a_missing_embedded_package_names_the_extra() -> None:
    with pytest.raises(EmbeddedServerError, match=r"vigil\[embedded\]") as refusal:
        import_embedded("vigil_no_such_embedded_server")
    assert "VIGIL_DATABASE_URL" in str(refusal.value)


def test_an_installed_one_is_imported() -> None:
    assert import_embedded("json").__name__ == "json"
