"""CLI: eval (placeholder until the eval service lands)."""
