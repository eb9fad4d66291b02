"""The hub's memory of usage: accounting per user, downsampled history, their tables and pages."""
