"""Pure mapping between the domain and FHIR R4 resources; no I/O."""
