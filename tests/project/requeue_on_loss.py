"""celerynb's own worker app with ``acks_late`` and ``reject_on_worker_lost``: a shipped
call whose pool process dies is delivered again (a legitimate redelivery)."""

from celerynb.worker import app

app.conf.task_acks_late = True
app.conf.task_reject_on_worker_lost = True
