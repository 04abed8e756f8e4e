"""Protocol edges: each translates the domain error tree into its own statuses once."""
