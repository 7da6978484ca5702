"""Shared infrastructure of every FaceHarmony process: settings, clock, ids, crypto, database, email, audit log, logging. Processes depend on this package, never on each other."""
