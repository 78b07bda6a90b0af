"""Named limit presets: the one place that says what "trial", "standard" and "enterprise" mean.

A new tenant starts from settings.TENANT_DEFAULT_PRESET (trial unless configured), so a tenant
created without limits is never unlimited by accident; "unlimited" is a preset too, chosen
explicitly. The console's create and limits forms offer them as starting points, and the
commands take `--preset NAME`; a tenant keeps no link to its preset (later edits are its own).
Plain data, no Django: settings.py validates TENANT_DEFAULT_PRESET against PRESET_NAMES.
"""

from types import MappingProxyType
from typing import Final

# Field -> value for every limit field and burst_percent (None: no limit at the tenant scope).
Preset = MappingProxyType[str, int | None]


def _preset(
    rpm: int | None,
    tpm: int | None,
    max_inflight: int | None,
    tokens_per_day: int | None,
    tokens_per_month: int | None,
    burst_percent: int = 20,
) -> Preset:
    return MappingProxyType(
        {
            "rpm": rpm,
            "tpm": tpm,
            "max_inflight": max_inflight,
            "tokens_per_day": tokens_per_day,
            "tokens_per_month": tokens_per_month,
            "burst_percent": burst_percent,
        }
    )


LIMIT_PRESETS: Final[MappingProxyType[str, Preset]] = MappingProxyType(
    {
        # Enough to try the API by hand and from a small script; a day's quota stops a leak.
        "trial": _preset(60, 20_000, 2, 200_000, 2_000_000),
        "standard": _preset(600, 200_000, 16, 5_000_000, 100_000_000),
        "enterprise": _preset(6_000, 2_000_000, 64, 50_000_000, 1_000_000_000),
        "unlimited": _preset(None, None, None, None, None),
    }
)
PRESET_NAMES: Final = tuple(LIMIT_PRESETS)
