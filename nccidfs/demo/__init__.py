"""Synthetic stand-ins for the NCCID warehouse, to demonstrate and test nccidfs without real data."""
