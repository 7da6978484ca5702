"""What two or more FaceHarmony processes share, by concern; nothing here runs on its own.

Modules here: settings (one typed object from FACEHARMONY_* variables), ids, clock, crypto, logs, datadir (the
private data folder), tempfiles (swept temporary files), children (child processes that die with their
parent) and process (the helper every process entry calls). Folders: db (models, migrations, locks, audit
log), blobstore, email, verify, jobs (the job queue and its training, order and eviction queues) and
diffusion (the base pipeline, the multi-LoRA engine, the adapter format and cache). Processes depend on this
package, never on each other (tests/test_layout.py).
"""
