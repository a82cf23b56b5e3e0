"""FHIR R4 JSON: validation (fhir.resources R4B), reading into records, writing bundles."""
