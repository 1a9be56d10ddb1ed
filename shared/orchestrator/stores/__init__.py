"""Stores: the protocols for state, cache, audit, runs and secrets, and their backends."""
