"""Delivery of result objects to destinations, with retries."""
