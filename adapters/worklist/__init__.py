"""Worklist updaters: HL7 v2 OMI^O23 over MLLP, and an in-memory twin for tests."""
