"""Helpers shared by the tests, importable as `helpers` (pyproject.toml puts tests/ on pytest's pythonpath)."""
