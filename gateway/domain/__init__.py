"""The domain core: plain, typed, frozen objects and rules. Imports no framework."""
