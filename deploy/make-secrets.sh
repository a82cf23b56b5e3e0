#!/usr/bin/env bash
# Make the secrets compose.yaml mounts, in deploy/secrets/ (never commit that folder):
# the encryption key ring, the JWT secret, and a private CA with certificates for Mosquitto,
# the proxy and the service's MQTT client. Run once; it refuses to overwrite.
set -euo pipefail
cd "$(dirname "$0")"
out=secrets
if [ -e "$out" ]; then echo "deploy/$out exists: move it away first" >&2; exit 1; fi
mkdir -p "$out/tls" && chmod 700 "$out"
medtwin keys generate --out "$out/medtwin.key"
printf 'MEDTWIN_SECRET=%s\n' "$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" \
  > "$out/medtwin.env"
cd "$out/tls"
openssl req -x509 -newkey rsa:3072 -nodes -days 825 -subj "/CN=medtwin private CA" \
  -keyout ca.key -out ca.crt
for name in mosquitto proxy service; do
  openssl req -newkey rsa:3072 -nodes -subj "/CN=$name" -keyout "$name.key" -out "$name.csr"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile <(printf 'subjectAltName=DNS:%s,DNS:localhost' "$name") -out "$name.crt"
  rm "$name.csr"
done
chmod 600 ./*.key
echo "secrets written to deploy/$out; keep ca.key offline"
