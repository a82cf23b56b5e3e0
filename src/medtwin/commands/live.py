"""`medtwin live`: ingest device readings from MQTT into the store until stopped."""

from __future__ import annotations

import json
import logging
import signal
import threading
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path

import typer

from medtwin.commands._common import (
    DB_HELP,
    JSON_HELP,
    RUNTIME,
    USAGE,
    echo_json,
    fail,
    open_store,
)
from medtwin.core.errors import MedtwinError, NotFoundError
from medtwin.core.records import Patient
from medtwin.interop.quality import FUTURE_TOLERANCE
from medtwin.live.connection import BrokerSpec, broker_spec
from medtwin.live.ingest import Ingester
from medtwin.live.publish import DevicePublisher, paced
from medtwin.live.streams import (
    ecg_heart_rate,
    numerics_frame,
    replay_readings,
    simulated_ward,
)
from medtwin.live.sync import GlucoseHook, MonitorLoop
from medtwin.monitor.rules import SEVERITY_WORDS
from medtwin.store.alerts import AlertStore
from medtwin.twin.glucose_sync import GlucoseSync

app = typer.Typer(add_completion=False)
log = logging.getLogger(__name__)

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
BROKER_HELP = ("MQTT broker URL: mqtt://HOST[:1883] or mqtts://HOST[:8883] (TLS); default "
               f"MEDTWIN_MQTT_URL, else {DEFAULT_BROKER}. Put no password in it: use "
               "MEDTWIN_MQTT_PASSWORD.")
USER_HELP = "Broker username (default MEDTWIN_MQTT_USERNAME); password: MEDTWIN_MQTT_PASSWORD."
CA_HELP = "CA certificate file for mqtts:// (default MEDTWIN_MQTT_CA_FILE, else system CAs)."
CERT_HELP = "Client certificate for mqtts:// (default MEDTWIN_MQTT_CERT_FILE)."
KEY_HELP = "Its private key (default MEDTWIN_MQTT_KEY_FILE)."


def broker_from(url: str | None, username: str | None, ca: Path | None, cert: Path | None,
                key: Path | None) -> BrokerSpec:
    """The broker to connect to: options first, then the settings (MEDTWIN_MQTT_*)."""
    from medtwin.api.settings import Settings

    s = Settings.from_env()
    return broker_spec(url or s.mqtt_url or DEFAULT_BROKER, username=username or s.mqtt_username,
                       password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
                       ca_file=ca or s.mqtt_ca_file, cert_file=cert or s.mqtt_cert_file,
                       key_file=key or s.mqtt_key_file)


@app.command("live")
def live_cmd(
    broker: str | None = typer.Option(None, "--broker", help=BROKER_HELP),
    username: str | None = typer.Option(None, "--mqtt-username", help=USER_HELP),
    ca: Path | None = typer.Option(None, "--mqtt-ca", help=CA_HELP),
    cert: Path | None = typer.Option(None, "--mqtt-cert", help=CERT_HELP),
    key: Path | None = typer.Option(None, "--mqtt-key", help=KEY_HELP),
    require_keys: bool = typer.Option(False, "--require-device-keys", help="Dead-letter "
                                      "readings of devices without a device key (medtwin key "
                                      "add); keyed devices are always held to their patient."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    prefix: str = typer.Option("medtwin", "--prefix", help="Topic prefix."),
    client_id: str = typer.Option("medtwin-ingester", "--client-id",
                                  help="MQTT client id: the persistent session's name."),
    group: str | None = typer.Option(None, "--group", help="Share the stream with other "
                                     "ingesters of this group (MQTT 5 shared subscription)."),
    report_every: float = typer.Option(10.0, "--report-every", help="Seconds between logs."),
    clock_skew: float = typer.Option(
        FUTURE_TOLERANCE.total_seconds(), "--clock-skew", min=0, max=24 * 3600,
        envvar="MEDTWIN_CLOCK_SKEW_SECONDS", help="Seconds a reading may be dated in the "
        "future (device clock skew) before it is quarantined: stored, never scored."),
    glucose_twin: bool = typer.Option(True, "--glucose-twin/--no-glucose-twin",
                                      help="Keep a glucose twin per CGM patient and alert on "
                                      "predicted lows."),
    cardio_twin: bool = typer.Option(False, "--cardio-twin/--no-cardio-twin",
                                     help="Keep each cardiac patient's cardiovascular twin "
                                     "in step with its vitals, in the background (at most "
                                     "once per MEDTWIN_CARDIO_TWIN_INTERVAL_SECONDS, 60 by "
                                     "default, per patient)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP + " Printed when it stops: "
                                 "the ingester's counts and the alerts raised."),
) -> None:
    """Run ingestion until Ctrl-C or SIGTERM; every acknowledged reading is stored."""
    logging.getLogger("medtwin").setLevel(logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        spec = broker_from(broker, username, ca, cert, key)
        with open_store(db, need_key=True, create=True) as store:  # writes need the key
            hooks: list = [GlucoseHook(GlucoseSync(store))] if glucose_twin else []
            if cardio_twin:
                from medtwin.api.settings import Settings
                from medtwin.live.sync import CardioHook

                every = Settings.from_env().cardio_twin_interval_seconds
                hooks.append(CardioHook(store, min_interval=timedelta(seconds=every)))
            monitor = MonitorLoop(store, broker=spec, prefix=prefix, hooks=hooks).start()
            ingester = Ingester(store, broker=spec, prefix=prefix, client_id=client_id,
                                group=group, on_stored=monitor.on_stored,
                                on_gap=monitor.on_gap, require_device_keys=require_keys,
                                future_tolerance=timedelta(seconds=clock_skew))
            try:
                ingester.start()
            except MedtwinError as exc:
                monitor.stop()
                fail(exc, _connect_code(exc))
            typer.echo(f"ingesting {ingester.topic} from {spec.url} into {store!r}", err=True)
            try:
                while not stop.wait(report_every):
                    log.info("%s", ingester.stats)
            except KeyboardInterrupt:
                pass
            ingester.stop()
            monitor.stop()
            typer.echo(f"stopped: {ingester.stats}; alerts raised: {monitor.raised}", err=True)
    except MedtwinError as exc:
        fail(exc)
    if as_json:
        from dataclasses import asdict

        echo_json({"broker": spec.url, "topic": ingester.topic, **asdict(ingester.stats),
                   "alerts_raised": monitor.raised})


@app.command("stream")
def stream_cmd(
    patients: int = typer.Option(10, "--patients", min=1, help="Simulated patients."),
    rate: float = typer.Option(1.0, "--rate", help="Ticks per second (each tick: every vital "
                               "of every patient); 0 = as fast as possible."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Ticks to publish "
                                     "(default: until Ctrl-C or SIGTERM)."),
    interval: float = typer.Option(60.0, "--interval", help="Patient-time seconds per tick."),
    deteriorating: float = typer.Option(0.2, "--deteriorating", help="Fraction who worsen."),
    replay: Path | None = typer.Option(None, "--replay", help="A WFDB record to replay: "
                                       "minute numerics, or an ECG (heart rate by R peaks)."),
    speed: float = typer.Option(60.0, "--speed", help="Replay speed (x real time)."),
    patient: str = typer.Option("replay-0001", "--patient", help="Patient id for a replay."),
    broker: str | None = typer.Option(None, "--broker", help=BROKER_HELP),
    username: str | None = typer.Option(None, "--mqtt-username", help=USER_HELP + " A "
                                        "device's username is mtk_<key id>, its password the "
                                        "API key."),
    ca: Path | None = typer.Option(None, "--mqtt-ca", help=CA_HELP),
    cert: Path | None = typer.Option(None, "--mqtt-cert", help=CERT_HELP),
    key: Path | None = typer.Option(None, "--mqtt-key", help=KEY_HELP),
    site: str = typer.Option("ward1", "--site"),
    device: str = typer.Option("monitor", "--device", help="Device id in the topics (the one "
                               "its device key is bound to)."),
    seed: int = typer.Option(0, "--seed", min=0),
    register: bool = typer.Option(False, "--register", help="Add the patients to --db first "
                                  "(the ingester refuses readings of unknown patients)."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Publish live readings of simulated patients, or replay a recorded signal.

    The simulated ward publishes until stopped (or --steps ticks); each reading is stamped
    when it is published."""
    start = datetime.now(UTC).replace(microsecond=0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        spec = broker_from(broker, username, ca, cert, key)
        if replay is not None and not (replay.exists() or replay.with_suffix(".hea").exists()):
            raise NotFoundError(f"no WFDB record at {replay} (looked for {replay} and "
                                f"{replay.with_suffix('.hea')}); give the record's path "
                                "without extension, e.g. records/100 for records/100.hea")
        if replay is not None:
            frame = numerics_frame(replay) if _is_numerics(replay) else ecg_heart_rate(replay)
            start -= frame["offset"].max().to_pytimedelta()  # ends now: never future-dated
            readings = sorted(replay_readings(frame, patient=patient, start=start,
                                              source=replay.stem), key=lambda r: r.time)
            ids = [patient]
            step = timedelta(seconds=1.0)
            batches = [list(g) for _, g in groupby(
                readings, key=lambda r: int((r.time - start) / (step * speed)))]
            tick_rate = 1.0
        else:
            batches = simulated_ward(patients, start=start, interval=timedelta(seconds=interval),
                                     steps=steps, seed=seed, deteriorating=deteriorating)
            ids = [f"sim-{p:04d}" for p in range(patients)]
            tick_rate = rate
        if register:
            with open_store(db, need_key=True, create=True) as store:
                store.append([Patient(id=i, source_id=f"Patient/{i}") for i in ids])
        typer.echo(f"publishing readings of {len(ids)} patient(s) to {spec.url}"
                   + ("" if replay is not None or steps else " until Ctrl-C"), err=True)
        pub = DevicePublisher(broker=spec, site=site, device=device)
        try:
            pub.open()
        except MedtwinError as exc:
            fail(exc, _connect_code(exc))
        try:
            total = paced(batches, pub, rate=tick_rate, stop=stop, stamp_now=replay is None)
        finally:
            pub.__exit__(None, None, None)
    except MedtwinError as exc:
        fail(exc)
    if as_json:
        echo_json({"published": total, "patients": len(ids), "broker": spec.url,
                   "registered": register})
    else:
        typer.echo(f"published {total} readings for {len(ids)} patient(s) to {spec.url}")
    if not register:
        typer.echo("note: the ingester stores readings only of patients in its store and "
                   "dead-letters the others; give --register --db STORE to add these "
                   "patients first", err=True)


def _connect_code(exc: MedtwinError) -> int:
    """Connecting to the broker: not reaching it is a runtime error (3); a broker that
    answered and refused (credentials, a plain client on a TLS port) is bad input (2)."""
    return RUNTIME if isinstance(exc.__cause__, OSError) else USAGE


def _is_numerics(record: Path) -> bool:
    """Minute numerics have a sampling frequency far below an ECG's."""
    import wfdb

    return float(wfdb.rdheader(str(record.with_suffix("")) if record.suffix else str(record)
                               ).fs) < 1.0


@app.command("alerts")
def alerts_cmd(
    patient: str | None = typer.Option(None, "--patient", help="Only this patient."),
    all_: bool = typer.Option(False, "--all", help="Include resolved alerts."),
    ack: int | None = typer.Option(None, "--ack", help="Acknowledge the alert with this id."),
    by: str = typer.Option("cli", "--by", help="Who acknowledges."),
    db: str | None = typer.Option(None, "--db", help=DB_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List active alerts (newest first), or acknowledge one."""
    try:
        with open_store(db) as store:
            alerts = AlertStore(store)
            if ack is not None:
                a = alerts.acknowledge(ack, by)
                typer.echo(json.dumps(a.to_dict()) if as_json else f"acknowledged {a.id}")
                return
            rows = alerts.all(patient) if all_ else alerts.active(patient)
    except MedtwinError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps([a.to_dict() for a in rows], indent=2))
        return
    if not rows:
        typer.echo("no active alerts")
    for a in rows:
        state = "resolved" if a.resolved else ("acked by " + a.acknowledged_by
                                                if a.acknowledged_by else "active")
        typer.echo(f"{a.id:5d}  {SEVERITY_WORDS.get(a.severity, a.severity):9s}  "
                   f"{a.patient_id}  {a.message}  [{state}]")
