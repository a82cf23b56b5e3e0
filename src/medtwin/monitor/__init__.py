"""Early-warning scores (NEWS2), alert rules and forecast-based alerts."""
