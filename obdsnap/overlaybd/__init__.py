"""overlaybd specifics: which snapshots are block layers, and the device config they need."""
