"""The job queue (`queue`: leased claims, heartbeats, hand-back) and the queues built on it: training jobs
(`training`), orders (`orders`, with the style catalogue in `styles`) and adapter evictions confirmed by every
inference replica (`evictions`)."""
