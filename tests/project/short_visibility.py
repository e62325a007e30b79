"""celerynb's own worker app, with Redis delivering again any message left unacknowledged
for more than a second (a ``visibility_timeout`` of 1 s, checked every second).

``SHORT_VISIBILITY_PREFETCH=1`` turns prefetching back on: the trap the defaults avoid.
"""

import os

from celerynb.worker import app

app.conf.broker_transport_options = {
    "visibility_timeout": 1,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
if os.environ.get("SHORT_VISIBILITY_PREFETCH") == "1":
    app.conf.worker_disable_prefetch = False
