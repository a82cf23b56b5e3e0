"""The demo's embedded MQTT 5 broker carries the live path; the patient page's twins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from medtwin.core.records import Patient
from medtwin.live.broker import EmbeddedBroker, topic_matches
from medtwin.live.ingest import Ingester
from medtwin.live.publish import DevicePublisher
from medtwin.live.streams import simulated_ward
from medtwin.live.sync import MonitorLoop
from medtwin.store.alerts import AlertStore
from medtwin.store.event_store import EventStore
from medtwin.ui.twins import glucose_what_if


def test_topic_filters():
    assert topic_matches("medtwin/+/+/+/+", "medtwin/w/p/d/hr")
    assert not topic_matches("medtwin/+/+/+/+", "medtwin/w/p/d")
    assert topic_matches("medtwin/#", "medtwin/alerts/w/p")
    assert not topic_matches("#", "$SYS/x") and not topic_matches("a/b", "a/c")


def test_embedded_broker_carries_qos1_mqtt5_ingestion_and_alerts(tmp_path):
    broker = EmbeddedBroker()
    url = broker.start()
    store = EventStore.open(str(tmp_path / "b.sqlite"))
    store.append([Patient(id=f"sim-{p:04d}", source_id=f"Patient/sim-{p:04d}")
                  for p in range(2)])
    monitor = MonitorLoop(store, broker=url).start()
    ingester = Ingester(store, broker=url, on_stored=monitor.on_stored).start()
    try:
        with DevicePublisher(broker=url) as pub:
            for batch in simulated_ward(2, start=datetime.now(UTC) - timedelta(minutes=5),
                                        interval=timedelta(seconds=30), steps=6,
                                        deteriorating=0.5, onset_steps=1):
                pub.publish(batch)
        assert ingester.wait_idle(quiet=0.5, timeout=20)
    finally:
        ingester.stop()
        monitor.stop()
        broker.stop()
    assert ingester.stats.stored == 2 * 5 * 6 and ingester.stats.dead_lettered == 0
    assert [a.patient_id for a in AlertStore(store).active()] == ["sim-0000"] * len(
        AlertStore(store).active()) and monitor.raised >= 1
    store.close()


def test_what_if_extra_meal_raises_the_predicted_glucose():
    w = glucose_what_if(("15:30", 80))
    after = (w.changed["minute"] > 15.5 * 60) & (w.changed["minute"] < 18 * 60)
    assert w.changed.loc[after, "glucose"].max() > w.plan.loc[after, "glucose"].max() + 20
    same = w.changed["minute"] < 15 * 60
    assert (w.changed.loc[same, "glucose"] - w.plan.loc[same, "glucose"]).abs().max() < 1e-6
