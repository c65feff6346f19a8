"""Relay MTA tests: client engine, dot-stuffing, queue, routing and delivery on loopback."""
