"""Instances: start them from verified image trees, watch their health, stop them cleanly."""
