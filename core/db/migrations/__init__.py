"""Schema migrations, applied in numeric order by faceharmony.core.db.migrate."""
