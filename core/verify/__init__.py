"""Upload verification (P6-P8): one interface, two backends — a local offline detector (default) and Google Cloud Vision (production)."""
