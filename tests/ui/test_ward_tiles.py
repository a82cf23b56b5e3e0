"""Ward tiles: the band in words as well as colour, every value escaped, times in the user's
zone; and the change feed the live ward polls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from medtwin.core.records import Observation, Patient
from medtwin.monitor.news2 import Vitals, news2
from medtwin.monitor.vitals import news2_breakdown
from medtwin.store.alerts import AlertStore
from medtwin.store.latest import ChangeFeed
from medtwin.store.rows import prepare_rows
from medtwin.ui.access import WardRow
from medtwin.ui.ward import badge_html, tile_html

T = datetime(2026, 7, 1, 12, 30, tzinfo=UTC)


def _alert(message: str):  # noqa: ANN202
    from medtwin.store.alerts import Alert

    return Alert(1, "p1", "news2", 3, message, {}, T, T)


def test_badge_says_the_band_in_words_and_in_its_label():
    high = news2(Vitals(respiration_rate=30, spo2=88, on_oxygen=True, systolic_bp=85,
                        pulse=135, consciousness="V", temperature=39.5))
    html = badge_html(WardRow("p1", "n", "m", {}, high))
    assert "HIGH" in html and f'aria-label="NEWS2 score {high.total}, high risk"' in html
    assert "bg-red-700" in html
    partial = news2(Vitals(respiration_rate=16))
    assert "(partial)" in badge_html(WardRow("p1", "n", "m", {}, partial))
    assert "no vital signs yet" in badge_html(WardRow("p1", "n", "m", {}, None))


def test_tile_escapes_data_and_shows_the_users_zone():
    items = {"pulse": (T - timedelta(minutes=2), 80.0)}
    b = news2_breakdown(items, at=T)
    row = WardRow("p1", "<b>x</b>", "<img src=x onerror=alert(1)>", {"HR": "80 /min"}, b.score,
                  [_alert("SpO2 <script>alert(1)</script> low")], T, T, b)
    html = tile_html(row, ZoneInfo("America/New_York"))
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&lt;img" in html
    assert "80 /min" in html and "1 active alert(s), 1 unacknowledged" in html
    assert "(raised just now)" in html
    assert "last reading 01 Jul 08:30:00 EDT (just now)" in html  # 12:30 UTC in New York
    assert "twin synced to 01 Jul 08:30:00 EDT" in html
    empty = tile_html(WardRow("p1", "n", "m", {}, None), ZoneInfo("UTC"))
    assert "no vital signs yet" in empty and "no active alerts" in empty
    assert "no readings yet" in empty and "no live twin" in empty


def test_change_feed_names_the_patients_with_new_events(store):
    store.append([Patient(id="a", source_id="a"), Patient(id="b", source_id="b")])
    feed = ChangeFeed(store)
    assert feed.poll() == set()
    store.append(records=[Observation("b", "8867-4", T, 80.0, "/min", "hr-1")])
    assert feed.poll() == {"b"}
    assert feed.poll() == set()
    alerts = AlertStore(store)
    before = alerts.version()
    alert = alerts.raise_alert("a", "news2", 3, "high", {}, T)
    assert alerts.version()[0] > before[0]
    mid = alerts.version()
    alerts.acknowledge(alert.id, "dr")
    assert alerts.version()[1] > mid[1]


def test_a_severe_alert_ranks_with_the_band_it_matches():
    low = news2(Vitals(respiration_rate=16, spo2=97, on_oxygen=False, systolic_bp=120,
                       pulse=70, consciousness="A", temperature=37.0))
    medium = news2(Vitals(respiration_rate=22, spo2=95, on_oxygen=False, systolic_bp=120,
                          pulse=95, consciousness="A", temperature=38.5))
    assert medium.total >= 5 > low.total
    from medtwin.store.alerts import Alert

    hypo = Alert(2, "p1", "hypo-predicted", 2, "glucose predicted below 70", {}, T, T)
    quiet = WardRow("a", "n", "m", {}, low)
    predicted_low = WardRow("b", "n", "m", {}, low, [hypo])
    unwell = WardRow("c", "n", "m", {}, medium)
    order = sorted([quiet, predicted_low, unwell], key=lambda r: r.rank, reverse=True)
    assert [r.patient_id for r in order] == ["c", "b", "a"]  # band 2 (score 5+) ties, score wins
    assert predicted_low.rank > quiet.rank
    assert WardRow("d", "n", "m", {}, None, [hypo]).rank > quiet.rank  # no vitals, but alerting


def test_change_feed_sees_a_lower_number_that_commits_late(store):
    """PostgreSQL hands out sequence numbers at insert and shows them at commit: a number
    below one already seen can appear later, and its patient must still be reported."""
    from medtwin.store import schema

    store.append([Patient(id="a", source_id="a"), Patient(id="b", source_id="b")])
    now = [0.0]
    feed = ChangeFeed(store, grace=5.0, clock=lambda: now[0])
    base = feed.seq

    def put(seq: int, patient: str) -> None:
        (row,) = prepare_rows([Observation(patient, "8867-4", T, float(seq), "/min",
                                           f"hr-{seq}")])
        with store.engine.begin() as conn:
            conn.execute(schema.events.insert().values(**row, seq=seq, recorded_at=T))

    put(base + 2, "b")  # the later transaction commits first
    assert feed.poll() == {"b"} and base + 1 in feed.gaps
    put(base + 1, "a")  # the earlier one commits now
    assert feed.poll() == {"a"} and not feed.gaps
    put(base + 4, "b")  # a gap that never fills (a skipped duplicate) expires
    assert feed.poll() == {"b"} and base + 3 in feed.gaps
    now[0] = 6.0
    assert feed.poll() == set() and not feed.gaps
