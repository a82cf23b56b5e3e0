"""Password hashing with argon2id (argon2-cffi), with parameters chosen at the edge."""

from __future__ import annotations

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from medtwin.core.errors import ValidationError

MIN_LENGTH = 10


class PasswordHasher:
    """argon2id hashing; ``memory_kib``/``time_cost`` default to RFC 9106's second profile."""

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65536,
                 parallelism: int = 1) -> None:
        self._h = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._dummy = self._h.hash("medtwin-timing-equaliser")

    def hash(self, password: str) -> str:
        """The argon2id hash of a password that meets the length rule."""
        check_password(password)
        return self._h.hash(password)

    def verify(self, hashed: str | None, password: str) -> bool:
        """Whether ``password`` matches; with no hash, a dummy check keeps the timing equal."""
        try:
            return self._h.verify(hashed or self._dummy, password) and hashed is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def check_password(password: str) -> None:
    """Refuse passwords that are too short to resist guessing."""
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise ValidationError(f"a password needs at least {MIN_LENGTH} characters",
                              where="password")
