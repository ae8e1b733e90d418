"""Tracking of studies, instances, jobs, results and deliveries."""
