"""Retention: the deletion policies (the retention issue builds the daemon; the orphan sweep is here already)."""
