"""Insulin pumps: limits and increments in the pump maker's units, and the peer's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from medtwin.core.errors import NotFoundError, SimulationError, ValidationError
from medtwin.devices.pump import InsulinPump, pump_names
from medtwin.models.glucose.loop import Pump


def _peer_basal(amount: float, inc: float, lo: float, hi: float) -> float:
    """simglucose 0.2.11 ``InsulinPump.basal``/``bolus``, line by line."""
    bas = amount * 6000
    bas = np.round(bas / inc) * inc
    bas = bas / 6000
    bas = min(bas, hi)
    return max(bas, lo)


def test_catalogue_and_protocol():
    assert pump_names() == ["Cozmo", "Insulet"]
    assert isinstance(InsulinPump.from_name("insulet"), Pump)
    with pytest.raises(NotFoundError, match="Cozmo, Insulet"):
        InsulinPump.from_name("Medtronic")


def test_physical_basal_rounds_to_0_05_u_per_hour_and_clips():
    pump = InsulinPump.from_name("Insulet")
    rates = np.array([0.021125, 0.0, -0.01, 1.0, 0.0004])  # U/min
    out = pump.basal(rates)
    # 1.2675 U/h -> 1.25; 0; negative -> 0; 60 U/h -> 30 (max); 0.024 U/h -> 0.0
    np.testing.assert_allclose(out * 60, [1.25, 0.0, 0.0, 30.0, 0.0], atol=1e-12)
    assert InsulinPump.from_name("Cozmo").basal(np.array([1.0]))[0] * 60 == pytest.approx(35.0)


def test_physical_bolus_rounds_to_0_05_u_and_clips():
    insulet, cozmo = InsulinPump.from_name("Insulet"), InsulinPump.from_name("Cozmo")
    req = np.array([3.14, 3.12, 0.02, 50.0, 80.0])
    np.testing.assert_allclose(insulet.bolus(req), [3.15, 3.1, 0.0, 30.0, 30.0], atol=1e-12)
    np.testing.assert_allclose(cozmo.bolus(req), [3.15, 3.1, 0.0, 50.0, 75.0], atol=1e-12)


def test_simglucose_convention_is_the_peers_arithmetic():
    pump = InsulinPump.from_name("Insulet", convention="simglucose", period=3.0)
    rates = np.array([0.021125, 1.6877916, 0.0, 45.0])
    expected = [_peer_basal(r, 0.05, 0.0, 30.0) for r in rates]
    np.testing.assert_array_equal(pump.basal(rates), expected)
    assert pump.basal(np.array([0.021125]))[0] == pytest.approx(0.021125, abs=1e-6)
    bolus_u = np.array([5.0, 0.1, 200.0])
    expected_u = [_peer_basal(b / 3.0, 0.05, 0.0, 30.0) * 3.0 for b in bolus_u]
    np.testing.assert_allclose(pump.bolus(bolus_u), expected_u, rtol=1e-15)
    assert pump.bolus(np.array([200.0]))[0] == pytest.approx(90.0)  # 30 U/min over 3 min


def test_bad_requests_and_parameters():
    pump = InsulinPump.from_name("Insulet")
    with pytest.raises(SimulationError, match="non-finite basal"):
        pump.basal(np.array([0.01, np.nan]))
    with pytest.raises(SimulationError, match="non-finite bolus"):
        pump.bolus(np.array([np.inf]))
    with pytest.raises(ValidationError, match="convention"):
        InsulinPump.from_name("Insulet", convention="metric")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="min <= max"):
        InsulinPump("x", 0, -1, 0.05, 0, 1, 0.05)
