"""Anonymous failures are audited per window: the first at once, the rest as one count when
the window ends; groups are bounded, so varying the path or address cannot make a flood."""

from __future__ import annotations

from medtwin.security.audit import AuditEntry
from medtwin.security.audit_failures import FailureAggregator, path_class


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_windows_audit_the_first_failure_then_one_count():
    written: list[AuditEntry] = []
    clock = Clock()
    agg = FailureAggregator(written.extend, window=60, clock=clock)
    for _ in range(500):
        agg.failed("10.0.0.9", "/patients/p1", "missing credential")
        clock.now += 0.05  # 25 s of failures
    assert len(written) == 1 and written[0].detail == "missing credential"
    clock.now += 40  # the window has ended: the next audited activity writes the count
    agg.sweep()
    assert len(written) == 2 and written[1].detail.startswith("499 further anonymous "
                                                              "authentication failures from "
                                                              "10.0.0.9 on /patients/...")
    agg.failed("10.0.0.9", "/patients/p1", "missing credential")  # a new window
    agg.failed("10.0.0.9", "/patients/p1", "missing credential")
    assert len(written) == 3
    agg.close()
    assert len(written) == 4 and written[-1].detail.startswith("1 further")
    agg.close()
    assert len(written) == 4  # nothing is counted twice


def test_groups_are_bounded_against_address_and_path_spraying():
    written: list[AuditEntry] = []
    agg = FailureAggregator(written.extend, window=60, max_groups=50, clock=Clock())
    for i in range(5000):
        agg.failed(f"10.0.{i // 250}.{i % 250}", f"/x{i}/y", "missing credential")
    assert len(written) == 51  # 50 groups, then one overflow group
    agg.close()
    assert sum(int(e.detail.split()[0]) for e in written if "further" in e.detail) == 4949


def test_one_address_spraying_paths_gets_a_bounded_number_of_groups():
    written: list[AuditEntry] = []
    agg = FailureAggregator(written.extend, window=60, max_paths=16, clock=Clock())
    for i in range(3000):
        agg.failed("10.0.0.9", f"/probe{i}/x", "missing credential")
    assert len(written) == 17  # 16 path classes, then one group for the rest of the address
    assert written[-1].resource == "*" and written[-1].source == "10.0.0.9"


def test_path_classes():
    assert path_class("/patients/p1/timeline") == "/patients/..."
    assert path_class("/audit") == "/audit"
    assert path_class("/") == "/"
    assert path_class("/" + "%00" * 100 + "/x") == "/?/..."
