"""The launcher that `make up` runs (`faceharmony-up`): every process on the embedded defaults, supervised."""
