"""Sub-command groups of `hitl-gateway`, one module per area; each exposes `register(subparsers)`.

`gateway.cli` registers every module listed in `COMMAND_MODULES`, so an area adds its commands
without touching the others.
"""

COMMAND_MODULES: tuple[str, ...] = (
    "gateway.commands.audit",
    "gateway.commands.model",
    "gateway.commands.outbox",
    "gateway.commands.review",
)
