"""The FHIR R4 facade without its HTTP server: one route table, handlers named after interactions.

`routes.ROUTES` is the whole API; `capability.capability_statement` is generated from it; the HTTP
listener binds each route and translates `GatewayError` into OperationOutcome once.
"""
