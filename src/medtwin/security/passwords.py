"""Password hashing with argon2id (argon2-cffi), with parameters chosen at the edge; and the
password policy: a minimum length and zxcvbn's guessability estimate, whose dictionaries
include the most common passwords from public breaches."""

from __future__ import annotations

from collections.abc import Sequence

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn

from medtwin.core.errors import ValidationError

MIN_LENGTH = 10
#: zxcvbn score 2: more than 10^6 guesses, far beyond what the login limits let an online
#: attacker try; common and breached passwords, keyboard walks and repeats score 0-1
MIN_SCORE = 2
_ZXCVBN_MAX = 72  # zxcvbn refuses longer input; the first 72 characters are judged


class PasswordHasher:
    """argon2id hashing; ``memory_kib``/``time_cost`` default to RFC 9106's second profile."""

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65536,
                 parallelism: int = 1) -> None:
        self._h = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        self._dummy = self._h.hash("medtwin-timing-equaliser")

    def hash(self, password: str, *, user_inputs: Sequence[str] = ()) -> str:
        """The argon2id hash of a password that meets the policy (:func:`check_password`)."""
        check_password(password, user_inputs=user_inputs)
        return self._h.hash(password)

    def verify(self, hashed: str | None, password: str) -> bool:
        """Whether ``password`` matches; with no hash, a dummy check keeps the timing equal."""
        try:
            return self._h.verify(hashed or self._dummy, password) and hashed is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def check_password(password: str, *, user_inputs: Sequence[str] = ()) -> None:
    """Refuse passwords that are too short, blank, or easy to guess (common or breached
    passwords, sequences, repeats, the user's own name); the error says why."""
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        raise ValidationError(f"a password needs at least {MIN_LENGTH} characters",
                              where="password")
    if not password.strip():
        raise ValidationError("a password cannot be only spaces", where="password")
    verdict = zxcvbn(password[:_ZXCVBN_MAX], user_inputs=[u for u in user_inputs if u])
    if verdict["score"] < MIN_SCORE:
        feedback = verdict["feedback"]
        why = (feedback.get("warning") or "").rstrip(".")
        tips = " ".join(feedback.get("suggestions") or []) or "Use a longer phrase of " \
            "uncommon words."
        raise ValidationError(f"this password is too easy to guess{': ' + why if why else ''}"
                              f". {tips}", where="password")
