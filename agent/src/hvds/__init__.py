"""hvds agent: tapping service, VDSA and site manager."""
