"""ADD plugin (being written)."""
