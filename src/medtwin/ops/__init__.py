"""ops: the hospital twin: discrete-event patient flow (SimPy), calibration, staffing, forecast."""
