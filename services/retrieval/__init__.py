"""The retrieval service: ranked passages of one owner's documents, and the local index's write path."""
