"""The report tests share `small_study` from tests/conftest.py."""
