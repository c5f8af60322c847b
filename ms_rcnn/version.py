"""The one source of ms-rcnn's version (setup.py reads this file as text)."""

__version__ = "0.1.0"
