"""Evaluating methods: insertion / deletion curves, the pointing game and its boxes, the method
comparison behind ``fdpipe evaluate`` and its report."""
