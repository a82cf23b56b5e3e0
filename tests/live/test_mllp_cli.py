"""`medtwin hl7 listen` and `medtwin hl7 send` as processes: one message, ACK AA, data in
the store; SIGTERM stops the listener cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medtwin.security.crypto import KeyRing, load_key_file
from medtwin.store.event_store import EventStore

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"

# HL7 v2.5.1 chapter 3 ADT^A01 example (the standard's fictitious Adam Everyman), as in
# tests/live/test_mllp.py.
A01 = ("MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB, INC.|GOOD HEALTH HOSPITAL|198808181126|"
       "SECURITY|ADT^A01^ADT_A01|MSG00001|P|2.5.1|\r"
       "EVN|A01|200708181123||\r"
       "PID|1||PATID1234^5^M11^ADT1^MR^GOOD HEALTH HOSPITAL~123456789^^^USSSA^SS||"
       "EVERYMAN^ADAM^A^III||19610615|M||C|2222 HOME STREET^^GREENSBORO^NC^27401-1020|GL|"
       "(555) 555-2004|(555)555-2004||S||PATID12345001^2^M10^ADT1^AN^A|444333333|987654^NC|\r"
       "PV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR||||ADM|A0|\r")
MEDTWIN = [sys.executable, "-m", "medtwin.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "keys.json"
    KeyRing.generate().save(key)
    out = {k: v for k, v in os.environ.items() if not k.startswith("MEDTWIN_")}
    return {**out, "MEDTWIN_KEY_FILE": str(key), "XDG_DATA_HOME": str(tmp_path / "data")}


def _connect(port: int, proc: subprocess.Popen[str]) -> socket.socket:
    for _ in range(300):
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)
    raise AssertionError("the listener did not come up")


def _ack(sock: socket.socket) -> str:
    buf = b""
    while FS + CR not in buf:
        chunk = sock.recv(65536)
        assert chunk, "connection closed without an ACK"
        buf += chunk
    return buf[1:buf.index(FS + CR)].decode()


def _stored(db: Path, env: dict[str, str]) -> list[str]:
    ring = load_key_file(Path(env["MEDTWIN_KEY_FILE"]))
    with EventStore.open(db, keyring=ring) as store:
        ids = list(store.patients()["id"])
        return [store.patient(i).identity["mrn"] for i in ids] + [
            str(store.counts().get("encounter", 0))]


def test_listen_stores_one_message_and_stops(tmp_path, env):
    db, port = tmp_path / "hl7.sqlite", _free_port()
    proc = subprocess.Popen([*MEDTWIN, "hl7", "listen", "--port", str(port), "--db", str(db),
                             "--max-messages", "1"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with _connect(port, proc) as sock:
        sock.sendall(VT + A01.encode() + FS + CR)
        ack = _ack(sock)
    assert "\rMSA|AA|MSG00001" in ack
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped:" in err and "accepted=1" in err
    assert "EVERYMAN" not in err and "PATID1234" not in err  # no identifiers in the log
    assert _stored(db, env) == ["PATID1234", "1"]


def test_sigterm_stops_the_listener_cleanly_and_send_reports_the_ack(tmp_path, env):
    db, port = tmp_path / "hl7.sqlite", _free_port()
    proc = subprocess.Popen([*MEDTWIN, "hl7", "listen", "--port", str(port), "--db", str(db)],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _connect(port, proc).close()
    msg = tmp_path / "a01.hl7"
    msg.write_text(A01.replace("\r", "\n"))  # a file with LF line ends, as people save them
    sent = subprocess.run([*MEDTWIN, "hl7", "send", str(msg), "--port", str(port)], env=env,
                          text=True, capture_output=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("MSA|AA|MSG00001")
    bad = tmp_path / "orm.hl7"
    bad.write_text(A01.replace("ADT^A01^ADT_A01|MSG00001", "ORM^O01^ORM_O01|MSG00009"))
    refused = subprocess.run([*MEDTWIN, "hl7", "send", str(bad), "--port", str(port)],
                             env=env, text=True, capture_output=True, timeout=60)
    assert refused.returncode == 1 and "MSA|AR|MSG00009" in refused.stdout
    assert "ERR||MSH^1^9|200^Unsupported message type" in refused.stdout
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped:" in err and "accepted=1" in err and "rejected=1" in err
    assert _stored(db, env) == ["PATID1234", "1"]


def test_listen_refuses_to_start_without_a_key(tmp_path, env):
    env = {k: v for k, v in env.items() if k != "MEDTWIN_KEY_FILE"}
    done = subprocess.run([*MEDTWIN, "hl7", "listen", "--port", str(_free_port()), "--db",
                           str(tmp_path / "x.sqlite"), "--duration", "1"], env=env, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 2 and "medtwin keys generate" in done.stderr
