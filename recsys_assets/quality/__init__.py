"""Offline evaluation of artifacts on held-out days and the quality gate before publish."""
