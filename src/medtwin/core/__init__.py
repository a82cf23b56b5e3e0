"""The engine: domain records, the Model contract, cohorts, schedules, simulate(), estimation."""
