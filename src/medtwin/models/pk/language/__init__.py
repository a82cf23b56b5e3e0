"""The PK/PD model language: expressions, custom ODEs, any compartments and observations."""
