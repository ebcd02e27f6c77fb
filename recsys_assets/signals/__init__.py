"""Postgres signals (SPEC §7): the online service's tables, fed from each day's aggregates."""
