"""Durable spool of received instances and results, and their index rows."""
