"""Schemathesis hooks for meterstand: the rules of /openapi.json that JSON Schema cannot state.

Each rule is written in the parameter's description in the document; this hook makes the
requests the fuzzer calls valid obey it, so that "schema-valid" means valid by the whole
document:

- an EAN (path parameter `ean`) ends in its GS1 check digit;
- `from` is not after `to` (a date means local midnight, Europe/Amsterdam), and `to - from`
  is at most the granularity's longest range (`api.max_range_*`, the defaults).

Only cases generated as valid ("positive") are changed; the invalid ones the fuzzer makes on
purpose stay as they are and must be refused with 4xx. Requests breaking these rules are
refused with 400 by the service, which the Rust tests check.
"""

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import schemathesis
from schemathesis.generation.modes import GenerationMode

# api.max_range_{interval,day,month} in config/default.toml, minus a day for DST and midnights.
MAX_RANGE = {"interval": 92, "day": 1097, "month": 3659}
LOCAL = ZoneInfo("Europe/Amsterdam")


def gs1_check_digit(digits: str) -> str:
    total = 0
    for i, c in enumerate(reversed(digits)):
        total += int(c) * (3 if i % 2 == 0 else 1)
    return str((10 - total % 10) % 10)


def parse_instant(text):
    """The instant the service reads, and the form it was written in; None when unreadable."""
    if not isinstance(text, str):
        return None, None
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=LOCAL), "date"
        return datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00")), "time"
    except (ValueError, OverflowError):
        return None, None


def fix_range(query):
    """Orders `from` and `to` and shortens the span to the granularity's limit, keeping the
    form (date or time) of `from`; values Python cannot handle (years near 0 or 9999) are
    replaced by an ordinary range of the same form."""
    granularity = query.get("granularity", "day")
    limit = timedelta(days=MAX_RANGE.get(granularity if isinstance(granularity, str) else "", 92))
    start, kind = parse_instant(query.get("from"))
    end, _ = parse_instant(query.get("to"))
    if start is None or end is None:
        return
    try:
        if not 2 <= start.year <= 9000:
            raise OverflowError
        span = min(abs(end.astimezone(timezone.utc) - start.astimezone(timezone.utc)), limit)
        end = start + span
    except (OverflowError, ValueError):
        start = datetime(2026, 1, 1, tzinfo=LOCAL if kind == "date" else timezone.utc)
        end = start + timedelta(days=1)
    if kind == "date":
        query["from"] = start.date().isoformat()
        query["to"] = end.date().isoformat()
    else:
        query["from"] = start.isoformat()
        query["to"] = end.isoformat()


@schemathesis.hook
def map_case(context, case):
    meta = getattr(case, "meta", None)
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return case
    ean = (case.path_parameters or {}).get("ean")
    if isinstance(ean, str) and len(ean) == 18 and ean.isascii() and ean.isdigit():
        case.path_parameters["ean"] = ean[:17] + gs1_check_digit(ean[:17])
    if isinstance(case.query, dict) and "from" in case.query and "to" in case.query:
        fix_range(case.query)
    return case
