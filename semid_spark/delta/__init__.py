"""The Delta output table: created if absent, model recorded, insert-only merges."""
