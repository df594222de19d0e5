"""Probing relay lines: one timed request per sample, outcomes in a user's words, rounds over many lines.

The modules are imported where probes run, not here: `status` reads samples
through probe.phases without paying for asyncio, ssl and aiohttp.
"""
