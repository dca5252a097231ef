"""Delivery: the outbox and the senders that push results to destinations."""
