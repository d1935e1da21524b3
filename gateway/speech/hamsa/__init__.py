"""hamsa."""
