"""A second OS process for a test (as a second daphne worker is): the project's settings and,
when it needs them, the running test's database, Django set up before the child's own code."""

import os
import subprocess
import sys

from conftest import database_url_for_current_test_db

# The script's first lines: nothing of the project may be imported before django.setup().
DJANGO_SETUP = "import django\ndjango.setup()\n"


def child_env(*, database: bool = False, **overrides: str) -> dict[str, str]:
    """This process's environment for a child on the project's settings; database: on the
    database of the running test (pytest-django's test database, not DATABASE_URL's)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "console.settings",
        # A child's first key load opens its database pool: on a busy machine (two test
        # workers) that can pass the 1 s production bound, which would read as an outage.
        "API_KEY_LOAD_TIMEOUT_SECONDS": "15",
    }
    if database:
        env["DATABASE_URL"] = database_url_for_current_test_db()
    return {**env, **overrides}


def django_script(script: str, *args: str) -> list[str]:
    """The command line that runs `script` (its sys.argv[1:] = args) with Django set up."""
    return [sys.executable, "-c", DJANGO_SETUP + script, *args]


def start_child(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a child that talks in lines of text on its stdin and stdout."""
    return subprocess.Popen(argv, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
