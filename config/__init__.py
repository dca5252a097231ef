"""Shipped default configuration and the settings schema."""
