"""The checkers of docs/exercises.md (a package, so that its conftest does not shadow tests/conftest.py)."""
