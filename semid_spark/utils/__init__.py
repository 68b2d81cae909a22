"""Utilities with semantic-id 0.2.5's module names (metrics)."""
