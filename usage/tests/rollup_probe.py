"""Run in a subprocess by the roll-up tests: one `usage_rollups_update(now=PROBE_NOW)` against the test database.

PROBE_GO_FILE makes it print "ready" and wait for that file, so that two processes start their runs together.
PROBE_HANG_AT_INSERT=N makes the run hang inside its Nth roll-up INSERT, mid-transaction, after printing "hanging",
for the test to kill it."""

import os
import time
from datetime import datetime

import django

django.setup()

from django.db import connection  # noqa: E402  (needs the app registry ready)

from usage.models import UsageRollup  # noqa: E402
from usage.rollups import usage_rollups_update  # noqa: E402

hang_at = int(os.environ.get("PROBE_HANG_AT_INSERT", "0"))
inserts = 0


def hang(execute, sql, params, many, context):
    global inserts
    if sql.startswith(f'INSERT INTO "{UsageRollup._meta.db_table}"'):
        inserts += 1
        if inserts == hang_at:
            print("hanging", flush=True)
            time.sleep(600)
    return execute(sql, params, many, context)


go_file = os.environ.get("PROBE_GO_FILE")
if go_file:
    print("ready", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.005)
with connection.execute_wrapper(hang):
    report = usage_rollups_update(now=datetime.fromisoformat(os.environ["PROBE_NOW"]))
print("done", report.hours, flush=True)
