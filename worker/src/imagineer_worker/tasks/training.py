"""training tasks (placeholder until implemented)."""
