"""Reading inputs (decoding image files, walking folders) and writing output shards atomically."""
