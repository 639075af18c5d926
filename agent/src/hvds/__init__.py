"""hvds agent: tapping service, VDSA and site manager."""

__version__ = "0.1.0"
