"""Schemathesis against the service's own OpenAPI schema, in-process (ASGI): no 5xx and no
response that breaks the schema, for a bounded number of examples per operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]
ADMIN_PATHS = ("/users", "/audit", "/care-teams", "/devices")
EXAMPLES = 15


def _fuzzer(op, headers):
    @given(case=op.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(headers={**(case.headers or {}), **headers}, checks=CHECKS)

    return run


@pytest.mark.slow
def test_no_5xx_and_no_schema_violation(world):
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.client.app)
    failures: dict[str, str] = {}
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 20
    for op in operations:
        role = "admin" if op.path.startswith(ADMIN_PATHS) else "clinician"
        try:
            _fuzzer(op, world.headers[role])()
        except BaseException as exc:  # noqa: B036 - collect every operation's failures
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures[f"{op.method.upper()} {op.path}"] = str(exc)[:1500]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
