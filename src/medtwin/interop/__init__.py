"""Interoperability: FHIR R4 in and out, UCUM units, code tables, the importer."""
