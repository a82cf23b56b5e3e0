"""How to reach an MQTT broker: address, TLS and credentials, shared by every medtwin client.

``mqtt://`` (or ``tcp://``) is plain TCP on port 1883; ``mqtts://`` (or ``ssl://``) is TLS on
8883, the server certificate checked against ``ca_file`` (or the system's CAs) and its host
name. A client certificate (``cert_file`` + ``key_file``) authenticates by certificate; a
username and password by password (a device's password is its API key). Credentials come
from the settings or the environment; a password written in the URL is accepted but never
shown: :attr:`BrokerSpec.url` and ``str()`` are always redacted, so logs and messages do not
leak it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt

from medtwin.core.errors import ValidationError

PLAIN_SCHEMES = frozenset({"mqtt", "tcp"})
TLS_SCHEMES = frozenset({"mqtts", "ssl"})
DEFAULT_PORT = {False: 1883, True: 8883}


@dataclass(frozen=True, slots=True)
class BrokerSpec:
    """A broker's address with what it takes to connect (validated by :func:`broker_spec`)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def url(self) -> str:
        """The address as it may be shown: scheme, host and port, never credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: server verified (certificate chain and host name)."""
        ctx = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(str(self.cert_file),
                                str(self.key_file) if self.key_file else None)
        return ctx

    def apply(self, client: mqtt.Client) -> None:
        """Give ``client`` this broker's TLS settings and credentials (before connect)."""
        if self.tls:
            try:
                client.tls_set_context(self.ssl_context())
            except (ssl.SSLError, OSError) as exc:
                raise ValidationError(f"cannot load the TLS files for {self.url}: {exc}",
                                      where="--mqtt-ca/--mqtt-cert/--mqtt-key") from exc
        if self.username is not None:
            client.username_pw_set(self.username, self.password)


def _file(value: str | Path | None, where: str) -> Path | None:
    if value is None or str(value) == "":
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValidationError(f"no such file: {path}", where=where)
    return path


def broker_spec(url: str, *, username: str | None = None, password: str | None = None,
                ca_file: str | Path | None = None, cert_file: str | Path | None = None,
                key_file: str | Path | None = None) -> BrokerSpec:
    """Parse ``mqtt[s]://[user[:password]@]host[:port]`` and the connection options.

    Explicit ``username``/``password`` win over those in the URL. TLS files need
    ``mqtts://``; a key needs its certificate; a password needs a username.
    """
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    scheme = parsed.scheme.lower()
    shown = f"{scheme}://{parsed.hostname or ''}"  # never echo credentials back
    if scheme not in PLAIN_SCHEMES | TLS_SCHEMES or not parsed.hostname:
        raise ValidationError(f"broker URL {shown!r} is not mqtt://HOST[:PORT] or "
                              "mqtts://HOST[:PORT]", where="--broker")
    tls = scheme in TLS_SCHEMES
    try:
        port = parsed.port or DEFAULT_PORT[tls]
    except ValueError as exc:
        raise ValidationError(f"broker URL {shown!r} has an invalid port",
                              where="--broker") from exc
    user = username if username else (unquote(parsed.username) if parsed.username else None)
    secret = password if password else (unquote(parsed.password) if parsed.password else None)
    if secret is not None and not user:
        raise ValidationError("a broker password needs a username", where="--mqtt-username")
    ca, cert = _file(ca_file, "--mqtt-ca"), _file(cert_file, "--mqtt-cert")
    key = _file(key_file, "--mqtt-key")
    if not tls and (ca or cert or key):
        raise ValidationError("TLS files given for a plain-text broker; use mqtts://HOST:8883",
                              where="--broker")
    if key and not cert:
        raise ValidationError("a client key needs its certificate", where="--mqtt-cert")
    return BrokerSpec(parsed.hostname, port, tls, user, secret, ca, cert, key)


def as_spec(broker: str | BrokerSpec) -> BrokerSpec:
    """A :class:`BrokerSpec` from a URL (no options) or itself."""
    return broker if isinstance(broker, BrokerSpec) else broker_spec(broker)


def refusal(reason: object) -> str:
    """A broker's CONNACK refusal as an operator reads it, with the usual fix."""
    text = str(reason)
    low = text.lower()
    if "password" in low or "authori" in low:
        return (f"{text}: check the username and password (MEDTWIN_MQTT_USERNAME / "
                "MEDTWIN_MQTT_PASSWORD; a device's password is its API key) or the client "
                "certificate")
    return text
