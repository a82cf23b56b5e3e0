"""Mosquitto credentials for devices: a password file and an ACL built from the device keys.

Each device key (``medtwin key add``) becomes a broker account: username ``mtk_<key id>``
(the key's first two parts), password the whole API key. The ACL lets that account publish
only ``<prefix>/+/<patient>/<device>/+``: its own patient and device, any site and metric.
The ingester's account may read every reading and write alerts. Revoked keys lose their
account the next time the files are written (``medtwin key broker-config``).

Password entries use Mosquitto's own ``$7$`` format (PBKDF2-HMAC-SHA512, 12-byte salt,
``$7$<iterations>$<base64 salt>$<base64 hash>``, what ``mosquitto_passwd`` writes). They are
computed here with :mod:`hashlib` rather than by running ``mosquitto_passwd -b``, which would
put the key on a command line where every local user can read it. The broker rereads both
files on SIGHUP (``systemctl reload mosquitto`` or ``kill -HUP <pid>``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from medtwin.core.errors import ValidationError
from medtwin.store import schema as t

PASSWD_FILE, ACL_FILE, CONF_FILE = "passwd", "acl", "mosquitto.conf"
ITERATIONS = 101  # Mosquitto's default; device passwords are 256-bit random keys
SALT_BYTES = 12
KEY_USER_PREFIX = "mtk_"  # device accounts: medtwin.security.directory.KEY_PREFIX + "_"
_TOPIC_LEVEL = re.compile(r"^[^/+#\s\x00]{1,200}$")
RELOAD_HINT = ("reload Mosquitto so it rereads them: `systemctl reload mosquitto` or "
               "`kill -HUP $(pidof mosquitto)`")


def check_topic_level(value: str, where: str) -> str:
    """``value`` as one MQTT topic level (no ``/``, ``+``, ``#``, spaces or NUL)."""
    if not isinstance(value, str) or not _TOPIC_LEVEL.match(value):
        raise ValidationError("cannot be used in an MQTT topic: use no '/', '+', '#' or "
                              "spaces", where=where)
    return value


def hash_password(password: str, *, iterations: int = ITERATIONS,
                  salt: bytes | None = None) -> str:
    """Mosquitto's ``$7$`` PBKDF2-SHA512 hash of ``password``."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def check_password(password: str, hashed: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (what the broker checks)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    return hmac.compare_digest(hash_password(password, iterations=int(parts[2]), salt=salt),
                               hashed)


def device_username(api_key: str) -> str:
    """The broker username of a device key ``mtk_<kid>_<secret>``: ``mtk_<kid>``."""
    parts = api_key.split("_", 2)
    if len(parts) != 3 or not api_key.startswith(KEY_USER_PREFIX):
        raise ValidationError("not a medtwin device key (mtk_<id>_<secret>)", where="key")
    return f"{parts[0]}_{parts[1]}"


@dataclass(frozen=True, slots=True)
class DeviceAccount:
    """One device key as the broker sees it."""

    key_id: str
    device: str
    patient: str
    revoked: bool

    @property
    def username(self) -> str:
        """Its broker username."""
        return f"{KEY_USER_PREFIX}{self.key_id}"

    def topic(self, prefix: str) -> str:
        """The only topics it may publish to."""
        return f"{prefix}/+/{self.patient}/{self.device}/+"


def device_accounts(engine: Engine) -> list[DeviceAccount]:
    """Every device key in the store (revoked ones too), oldest first."""
    k = t.api_keys
    with engine.connect() as conn:
        rows = conn.execute(select(k.c.key_id, k.c.device_id, k.c.patient_id, k.c.revoked)
                            .order_by(k.c.created_at, k.c.key_id)).all()
    return [DeviceAccount(r[0], r[1], r[2], bool(r[3])) for r in rows]


def read_passwd(path: Path) -> dict[str, str]:
    """``user -> hash`` from a Mosquitto password file (empty when there is none)."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep:
            raise ValidationError(f"line {n} is not user:hash", where=str(path))
        out[user] = hashed
    return out


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically, readable by the owner only (the broker runs as it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def acl_text(accounts: list[DeviceAccount], *, prefix: str, ingester: str) -> str:
    """The ACL: the ingester reads every reading and writes alerts; each device account
    writes only its own patient's and device's topics."""
    lines = ["# written by `medtwin key broker-config`; edits are replaced", "",
             f"user {ingester}", f"topic read {prefix}/#", f"topic write {prefix}/alerts/#", ""]
    for a in accounts:
        if a.revoked:
            continue
        lines += [f"user {a.username}", f"topic write {a.topic(prefix)}", ""]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """What :func:`write_broker_files` wrote."""

    folder: Path
    devices: int
    removed: int
    skipped: int
    missing: int  # active keys without a password entry (issued before the folder was set)
    ingester_password: str | None  # set only when a new one was generated: show it once


def write_broker_files(folder: Path, accounts: list[DeviceAccount], *, prefix: str,
                       ingester: str, ingester_password: str | None = None,
                       new_keys: dict[str, str] | None = None) -> BrokerFiles:
    """Write ``passwd``, ``acl`` and a ``mosquitto.conf`` example into ``folder``.

    ``new_keys`` maps usernames to API keys just issued (hashed now: the store keeps only a
    digest of a key, so a device account's hash can be made only when its key is issued).
    Existing entries of active keys and of other (hand-made) accounts are kept; accounts of
    revoked or deleted keys are removed. Device ids and patient ids must be topic-safe;
    a key whose ids are not is left out (``skipped``).
    """
    check_topic_level(ingester, "--ingester-user")
    folder.mkdir(parents=True, exist_ok=True)
    entries = read_passwd(folder / PASSWD_FILE)
    safe, skipped = [], 0
    for a in accounts:
        try:
            check_topic_level(a.device, "device")
            check_topic_level(a.patient, "patient")
            safe.append(a)
        except ValidationError:
            skipped += 1
    active = {a.username for a in safe if not a.revoked}
    removed = [u for u in entries if u.startswith(KEY_USER_PREFIX) and u not in active]
    for u in removed:
        del entries[u]
    for user, key in (new_keys or {}).items():
        if user in active:
            entries[user] = hash_password(key)
    missing = sum(u not in entries for u in active)
    generated = None
    if ingester_password:
        if ingester not in entries or not check_password(ingester_password, entries[ingester]):
            entries[ingester] = hash_password(ingester_password)
    elif ingester not in entries:
        generated = secrets.token_urlsafe(32)
        entries[ingester] = hash_password(generated)
    _write_private(folder / PASSWD_FILE,
                   "".join(f"{u}:{h}\n" for u, h in entries.items()))
    _write_private(folder / ACL_FILE, acl_text(safe, prefix=prefix, ingester=ingester))
    _write_private(folder / CONF_FILE, conf_text(folder))
    return BrokerFiles(folder, len(active), len(removed), skipped, missing, generated)


def conf_text(folder: Path) -> str:
    """An example Mosquitto configuration using these files (TLS on 8883, no anonymous)."""
    return f"""# Mosquitto configuration for medtwin devices (from `medtwin key broker-config`).
# Put your broker's certificate files in place of the three paths below.
per_listener_settings false
allow_anonymous false
password_file {folder.resolve() / PASSWD_FILE}
acl_file {folder.resolve() / ACL_FILE}
persistence true

# TLS with username/password (a device: username mtk_<key id>, password its API key)
listener 8883
cafile /etc/mosquitto/certs/ca.crt
certfile /etc/mosquitto/certs/server.crt
keyfile /etc/mosquitto/certs/server.key
tls_version tlsv1.2

# Optional: client certificates instead of passwords (certificate CN = broker username)
# listener 8884
# cafile /etc/mosquitto/certs/ca.crt
# certfile /etc/mosquitto/certs/server.crt
# keyfile /etc/mosquitto/certs/server.key
# require_certificate true
# use_identity_as_username true
"""
