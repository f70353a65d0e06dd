"""Store: the cache file format and the index that records every output."""
