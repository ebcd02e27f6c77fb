"""Raw exposure events in, canonical daily partitions out."""
