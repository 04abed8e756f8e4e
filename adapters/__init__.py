"""Systems the gateway calls: worklist updaters and EHR look-ups, each behind a Protocol."""
