"""Read-only inspection of a root: ``obdsnap status | ls | devices | intents``."""
