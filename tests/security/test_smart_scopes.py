"""SMART v2 scopes: parsing (v2 and v1 forms), decisions per type, interaction and patient
context, the mapping of medtwin's own resources, and the role ceiling at sign-in."""

from __future__ import annotations

import pytest

from medtwin.core.errors import ValidationError
from medtwin.security.roles import Role
from medtwin.security.smart import (
    Level,
    Scope,
    ScopeSet,
    bounded,
    granted_at_sign_in,
    interactions_for,
    parse_scope,
    types_for,
)


@pytest.mark.parametrize(("text", "level", "resource", "perms"), [
    ("patient/Observation.rs", Level.PATIENT, "Observation", "rs"),
    ("user/*.cruds", Level.USER, "*", "cruds"),
    ("system/Patient.r", Level.SYSTEM, "Patient", "r"),
    ("patient/*.read", Level.PATIENT, "*", "rs"),        # v1 read = rs
    ("user/Observation.write", Level.USER, "Observation", "cud"),  # v1 write = cud
    ("user/*.*", Level.USER, "*", "cruds"),               # v1 * = cruds
])
def test_resource_scopes_parse_to_v2(text, level, resource, perms):
    assert parse_scope(text) == Scope(level, resource, perms)


@pytest.mark.parametrize("text", ["openid", "fhirUser", "launch/patient", "offline_access",
                                  "patient/Observation.rs?category=laboratory"])
def test_non_resource_and_granular_scopes_grant_nothing(text):
    assert parse_scope(text) is None


@pytest.mark.parametrize("text", ["patient/Observation.sr", "patient/Observation.x",
                                  "doctor/*.rs", "patient/observation.rs", "user/*.",
                                  "user/*.rr"])
def test_malformed_resource_scopes_are_refused_naming_the_form(text):
    with pytest.raises(ValidationError, match="scope"):
        parse_scope(text)


def test_a_token_with_malformed_scopes_keeps_the_good_ones_unless_strict():
    s = ScopeSet.parse("openid patient/Observation.sr patient/Patient.r")
    assert s.text() == "patient/Patient.r"
    with pytest.raises(ValidationError):
        ScopeSet.parse("patient/Observation.sr", strict=True)


def test_patient_observation_rs_reads_and_searches_only_its_patient_and_cannot_create():
    s = ScopeSet.parse("launch/patient patient/Observation.rs", launch_patient="p1")
    assert s.decide(("Observation",), "r", "p1").allowed
    assert s.decide(("Observation",), "s", "p1").allowed
    other = s.decide(("Observation",), "r", "p2")
    assert not other.allowed and other.hidden and other.missing == "Observation.r"
    create = s.decide(("Observation",), "c", "p1")
    assert not create.allowed and not create.hidden and create.missing == "Observation.c"
    assert not s.decide(("Patient",), "r", "p1").allowed  # another type
    assert not s.decide(("*",), "r", "p1").allowed  # the whole record needs a * scope


def test_patient_scopes_without_a_launch_patient_grant_nothing():
    d = ScopeSet.parse("patient/*.cruds").decide(("Observation",), "r", "p1")
    assert not d.allowed and "launch patient" in (d.reason or "")


def test_user_scopes_cover_any_patient_and_wildcards_cover_every_type():
    s = ScopeSet.parse("user/*.rs")
    assert s.decide(("Observation",), "rs", "p9").allowed
    assert s.decide(("*",), "r", None).allowed
    assert not s.decide(("Observation",), "u", "p9").allowed


def test_every_interaction_and_every_type_must_be_covered():
    s = ScopeSet.parse("user/Observation.r user/Patient.rs")
    assert not s.decide(("Observation",), "rs").allowed
    assert s.decide(("Patient",), "rs").allowed


def test_medtwin_resources_map_to_fhir_types():
    assert types_for("Observation") == ("Observation",)
    assert types_for("patients") == ("Patient",)
    assert types_for("timeline") == ("*",)
    assert types_for("alerts") == ("Flag",)
    assert types_for("users") == ("*",)          # administrative: the * scope
    assert types_for("research-timeline") == ("*",)


def test_actions_and_methods_map_to_interactions():
    assert interactions_for("read", "GET") == "r"
    assert interactions_for("search", "GET") == "s"
    assert interactions_for("write", "POST") == "c"
    assert interactions_for("write", "PUT") == "u"
    assert interactions_for("delete", "DELETE") == "d"
    assert interactions_for(None, "GET") == "s"
    assert interactions_for("something-new", "GET") == "cruds"  # default deny for narrow


def test_the_role_bounds_what_a_sign_in_is_granted():
    assert granted_at_sign_in(["patient/*.cruds", "user/Observation.cruds"], Role.PATIENT,
                              "p1") == "patient/*.rs user/Observation.rs"
    assert granted_at_sign_in(["system/*.cruds", "user/*.rs"], Role.RESEARCHER, None) == \
        "user/*.rs"
    # a clinician signing in has no launch patient: patient/ scopes would grant nothing
    assert granted_at_sign_in(["patient/*.rs", "user/*.cruds"], Role.CLINICIAN, None) == \
        "user/*.cruds"
    assert granted_at_sign_in([], Role.CLINICIAN, None) is None
    assert bounded(ScopeSet.parse("user/*.cruds"), Role.DEVICE).scopes == ()
