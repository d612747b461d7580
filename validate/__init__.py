"""validate part of rvrt-deploy (see README, architecture)."""
