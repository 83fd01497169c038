"""Fixtures of the data tests: the bad-input corpus (built in bad_corpus.py)."""

from bad_corpus import bad_corpus  # noqa: F401  (a session fixture)
