"""The timeline's page cursor: an opaque token for a position (time, seq) in a timeline.

Clients pass back what they were given; the token is base64url JSON, not a secret (it
only names a row position the caller could already read), and anything else is a 422.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from medtwin.api.problems import ApiError


def encode_cursor(position: tuple[datetime | None, int]) -> str:
    """The token for the position after which the next page starts."""
    at, seq = position
    raw = json.dumps([at.isoformat() if at else None, seq], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime | None, int]:
    """The position a token names; 422 when it is not one this service gave."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        at, seq = json.loads(raw)
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
            raise ValueError("seq")
        when = None if at is None else datetime.fromisoformat(at)
        if when is not None and when.tzinfo is None:
            raise ValueError("naive time")
        if when is not None:
            when = when.astimezone(UTC)  # OverflowError at the ends of the calendar
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, "cursor: not a cursor this service gave; pass the `next` value "
                       "of the previous page, or leave it out to start at the beginning"
                       ) from None
    return when, seq
