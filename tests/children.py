"""Programs that tests and benches run as child processes, to kill or to race them."""

# Rewrites both user files in a loop until killed: every kill -9 lands mid-update somewhere.
KILLED_WRITER = r"""
import sys
from pathlib import Path
from linepicker.targets import update_claude_settings, update_dotenv

dotenv, settings, urls = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
print("ready", flush=True)
n = 0
while True:
    update_claude_settings(settings, urls[n % 2])
    update_dotenv(dotenv, urls[n % 2])
    n += 1
"""
