"""Talking to the ScaleEngine API: PHP-compatible JSON, signing, timestamps, HTTP, retries."""
