"""Per-person data keys and the AEAD of personal data (issue 12): see keyring.py."""
