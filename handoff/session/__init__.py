"""One VM session: plan, preflight, resources, supervisor, shutdown ladder, its end, recover.

Empty on purpose: the light commands import ``handoff.session.end`` and
``handoff.session.rundir`` without loading the supervisor (trio).
"""
