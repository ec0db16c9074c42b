"""Messaging channels: turn a platform's webhook into pipeline messages and send the replies back."""
