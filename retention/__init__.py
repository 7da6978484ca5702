"""Retention: the deletion policies (policies.py), the daemon that runs them (daemon.py), its metrics and the orphan-blob sweep."""
