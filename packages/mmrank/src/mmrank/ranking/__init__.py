"""Ranking algorithms that need no model: sliding windows, parsing and repairing orderings."""
