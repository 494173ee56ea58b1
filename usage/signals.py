"""Signals of the usage app, for in-process integrations.

`billing_event` is sent once per billing event when the webhooks sweep dispatches it (after the transaction that
marks it dispatched commits), in the process running the sweep: the Celery worker, or the app's own process when
tasks run eagerly. Keyword argument `event`: the same dict a webhook receives as its JSON body (`id`, `type`,
`created`, `data`); `sender` is the `BillingEvent` model. Receivers are called with `send_robust`: one that
raises is logged and the others still run. For a guaranteed, retried delivery use a webhook endpoint."""

from django.dispatch import Signal

billing_event = Signal()
