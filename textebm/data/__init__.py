"""Text in: corpora and their splits, vocabularies (words or SentencePiece), padded id batches."""
