"""What people and scripts are shown: JSON documents, terminal tables, history, charts and pages.

Everything here reads the core's results and renders them; nothing in the core
imports it. The CLI uses the terminal rendering; the daemon serves the
documents and the page.
"""
