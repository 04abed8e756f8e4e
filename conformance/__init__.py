"""Conformance documents generated from the code's own tables."""
