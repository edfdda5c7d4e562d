"""The store seam: one contract on every store, and each store's own promises."""
