#!/usr/bin/env bash
# Make the secrets compose.yaml mounts, in deploy/secrets/ (never commit that folder):
# the encryption key ring, the JWT secret, and a private CA with certificates for Mosquitto,
# the proxy and the ingester's MQTT client. Run once, where `medtwin` and `openssl` are
# installed; it refuses to overwrite.
#
#   PUBLIC_HOST=twin.example.org deploy/make-secrets.sh
#
# PUBLIC_HOST: the name devices and browsers use to reach the broker and the proxy (it goes
# into their certificates beside their compose service names; default localhost).
# The files the containers read are given to uid 1883 (the medtwin image's user, the same
# uid as the eclipse-mosquitto image's): medtwin refuses a key file others can read, and the
# compose secrets keep the host's owner and mode. That needs root: run as root, or sudo asks.
set -euo pipefail
cd "$(dirname "$0")"
out=secrets
uid=1883
public=${PUBLIC_HOST:-localhost}
if [ -e "$out" ]; then echo "deploy/$out exists: move it away first" >&2; exit 1; fi
mkdir -p "$out/tls" && chmod 700 "$out"
medtwin keys generate --out "$out/medtwin.key"
printf 'MEDTWIN_SECRET=%s\n' "$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" \
  > "$out/medtwin.env"
chmod 600 "$out/medtwin.env"
# the CA key stays outside tls/ (that folder is mounted into the broker and the proxy)
openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=medtwin private CA" \
  -keyout "$out/ca.key" -out "$out/tls/ca.crt"
chmod 600 "$out/ca.key"
# file stem, certificate CN (the ingester's CN is its broker username, see mosquitto.conf)
issue() {
  local stem=$1 cn=$2 ext=$3
  openssl req -newkey rsa:3072 -nodes -subj "/CN=$cn" \
    -keyout "$out/tls/$stem.key" -out "$out/tls/$stem.csr"
  openssl x509 -req -in "$out/tls/$stem.csr" -CA "$out/tls/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -CAserial "$out/ca.srl" -days 825 -extfile <(printf '%s' "$ext") \
    -out "$out/tls/$stem.crt"
  rm "$out/tls/$stem.csr"
}
issue mosquitto mosquitto \
  "subjectAltName=DNS:mosquitto,DNS:$public,DNS:localhost
extendedKeyUsage=serverAuth"
issue proxy "$public" \
  "subjectAltName=DNS:proxy,DNS:$public,DNS:localhost
extendedKeyUsage=serverAuth"
issue ingester medtwin-ingester "extendedKeyUsage=clientAuth"
chmod 600 "$out"/tls/*.key
chmod 644 "$out"/tls/*.crt
as_root=()
if [ "$(id -u)" != 0 ]; then as_root=(sudo); fi
"${as_root[@]}" chown "$uid:$uid" "$out/medtwin.key" "$out"/tls/*.key "$out"/tls/*.crt
echo "secrets written to deploy/$out; keep $out/ca.key offline and back up $out/medtwin.key"
