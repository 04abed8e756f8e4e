"""Bearer tokens: the embedded development issuer and the SMART on FHIR v2 token validator."""
