"""Coding sheets of CASME II and SAMM: readers, AU-string parsing, MER classes."""
from __future__ import annotations

# Paper IV-A: the AUs evaluated per dataset.
DEFAULT_AUS = {"casme2": [1, 2, 4, 7, 12, 14, 15, 17], "samm": [2, 4, 7, 12]}
