"""Twins: a model + a posterior + a state, kept in step with events."""
