"""Retrieval on a run's descriptors: exact and faiss search, PCA whitening, and the
copy-detection benchmark. Each module imports its heavy dependencies inside its functions."""
