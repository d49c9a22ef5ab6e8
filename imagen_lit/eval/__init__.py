"""Evaluation on the synthetic world and with real feature networks."""
