"""Identities, roles, per-patient access, the audit chain, PHI encryption, de-identification."""
