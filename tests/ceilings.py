"""The default ceilings, in GBP minor units, for tests that call the domain directly
(the application passes the settings' ceilings in; these are the defaults)."""

from __future__ import annotations

from typing import Final

from domain.money import minor_units
from infrastructure.settings import Settings

BALANCE_MAX_MINOR: Final = minor_units(Settings.model_fields["balance_max"].default, "GBP")
OVERDRAFT_MAX_MINOR: Final = minor_units(Settings.model_fields["overdraft_max"].default, "GBP")
