"""The whole service as processes: kill -9, faults of the store, the command itself."""
