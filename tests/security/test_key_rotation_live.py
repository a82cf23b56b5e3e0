"""Key rotation under load: a running service follows ``medtwin keys rotate`` (and
``--drop-old``) without a restart, and no request fails across the rotations."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import jwt
import pytest
from tests.api.service_procs import Service, bearer, login, seed, service_env

from medtwin.security.crypto import create_key_file, load_key_file

pytestmark = pytest.mark.slow


def test_no_request_fails_across_key_rotations(tmp_path):
    key_file = tmp_path / "keys.json"
    create_key_file(key_file)
    db = str(tmp_path / "store.sqlite")
    seed(db, key_file)
    env = service_env(db, key_file)
    svc = Service.factory(env, tmp_path / "svc.log").wait_ready()
    try:
        before = login(svc.base).json()
        old_kid = jwt.get_unverified_header(before["access_token"])["kid"]
        assert old_kid == load_key_file(key_file).current
        failures: list[str] = []
        counts = [0]
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=svc.base, headers=bearer(before["access_token"]),
                              timeout=30) as client:
                while not stop.is_set():
                    r = client.get("/patients/p1")  # opens the sealed identity every time
                    counts[0] += 1
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    elif r.json()["identity"]["name"][0]["family"] != "Lovelace":
                        failures.append(f"wrong identity {r.text[:200]}")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(1.0)
            for extra in ([], ["--drop-old"]):
                done = subprocess.run([sys.executable, "-m", "medtwin.cli", "keys", "rotate",
                                       "--db", db, *extra], env=env, capture_output=True,
                                      text=True, timeout=300)
                assert done.returncode == 0, done.stderr
                time.sleep(2.5)  # past the service's key-file check interval
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures, failures[:5]
        assert counts[0] > 20  # the load really ran across both rotations

        ring = load_key_file(key_file)
        assert old_kid not in ring.keys and len(ring.keys) == 1  # two rotations, old dropped
        after = login(svc.base).json()  # new tokens are signed under the current key
        assert jwt.get_unverified_header(after["access_token"])["kid"] == ring.current
        # the token of the first key still verifies (until it expires), refresh included
        assert httpx.get(f"{svc.base}/patients/p1",
                         headers=bearer(before["access_token"])).status_code == 200
        refreshed = httpx.post(f"{svc.base}/auth/refresh",
                               json={"refresh_token": before["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
    finally:
        svc.stop()
    assert "could not be reloaded" not in svc.log.read_text()
