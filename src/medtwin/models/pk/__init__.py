"""Pharmacokinetic models: closed-form linear compartments, ODE models, population specs."""
