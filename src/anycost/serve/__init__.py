"""Serving: a batching HTTP server whose budget controller moves the operating point with the
load (``anycost serve``), its Ray Serve deployment, and an open-loop load generator."""
