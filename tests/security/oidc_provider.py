"""A tiny OpenID Connect provider for tests: RSA and EC keys made here, a JWKS served over
HTTP on 127.0.0.1 (counting fetches) or written to a file, and signed access tokens."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.test/realms/hospital"
AUDIENCE = "medtwin-fhir"


class Provider:
    """Keys by kid, the published JWKS, and tokens signed with any held key."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}
        self.published: list[str] = []
        self.fetches = 0
        self._server: ThreadingHTTPServer | None = None

    def add_key(self, kid: str, kind: str = "RSA", *, publish: bool = True) -> None:
        """Make a key (RSA 2048 or EC P-256) and, by default, publish it."""
        self.private[kid] = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                             if kind == "RSA" else ec.generate_private_key(ec.SECP256R1()))
        if publish:
            self.published.append(kid)

    def unpublish(self, kid: str) -> None:
        """Remove a key from the JWKS (the provider rotated it out)."""
        self.published.remove(kid)

    def jwks(self) -> dict[str, Any]:
        """The JWKS document of the published keys."""
        keys = []
        for kid in self.published:
            key = self.private[kid]
            algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
            jwk = algo.to_jwk(key.public_key(), as_dict=True)
            jwk.update(kid=kid, use="sig")
            keys.append(jwk)
        return {"keys": keys}

    def public_pem(self, kid: str) -> bytes:
        """A key's public half in PEM (to forge an HS256 token with it as the secret)."""
        from cryptography.hazmat.primitives import serialization

        return self.private[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, kid: str = "k1", *, alg: str | None = None, sub: str = "dr_a",
              scope: str | None = "user/*.cruds", patient: str | None = None,
              iss: str = ISSUER, aud: str = AUDIENCE, ttl: int = 300,
              extra: dict[str, Any] | None = None) -> str:
        """An access token signed with key ``kid``."""
        key = self.private[kid]
        alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
        now = int(time.time())
        claims: dict[str, Any] = {"iss": iss, "aud": aud, "sub": sub, "iat": now,
                                  "exp": now + ttl, **(extra or {})}
        if scope is not None:
            claims["scope"] = scope
        if patient is not None:
            claims["patient"] = patient
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})

    def write(self, path: Path) -> str:
        """Write the JWKS to ``path``; its path as configured."""
        path.write_text(json.dumps(self.jwks()))
        return str(path)

    def serve(self) -> str:
        """Serve the JWKS on 127.0.0.1 (a fresh port); its URL."""
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                provider.fetches += 1
                body = json.dumps(provider.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/jwks"

    def close(self) -> None:
        """Stop the HTTP server."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
