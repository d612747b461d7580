"""The cluster layer: rvrt-run's temporal windows served by Ray actors, and rvrt-batch over many videos."""
