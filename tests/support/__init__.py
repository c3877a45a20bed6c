"""Helpers for tests that run real node processes."""
