"""The long-running side: scheduled rounds, rise/fall health, the status page, /metrics.

It calls the core (picker, store, policy) and the report's documents and page;
nothing in the core imports it. The package itself stays light so the CLI can
read LOG_LEVELS without loading aiohttp or APScheduler.
"""

LOG_LEVELS = ("debug", "info", "warning", "error")
