"""The SCP: application entity, presentation contexts and thin event handlers."""
