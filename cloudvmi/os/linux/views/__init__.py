"""Views of a Linux guest, one subsystem per module (see catalog.py)."""
