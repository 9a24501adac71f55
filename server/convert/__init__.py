"""Pure proto -> engine request functions (validation included); no I/O, no engine."""
