"""Sweep spec schema, budget planner, data sources and the per-worker training loop."""
