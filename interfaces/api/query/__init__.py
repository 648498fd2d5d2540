"""The query API: reads the read models, never changes domain state."""
