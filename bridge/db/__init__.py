"""The database layer: every SQL statement of the bridge, and the only package that imports asyncpg.

One module a concern: ``pool`` (connecting, failover, pooler options, translating
"unreachable" into :class:`bridge.errors.Unavailable`), ``schema`` (migrations and
current definitions), ``activations`` (the activation batcher, refusals, the audit
tally, housekeeping), ``transitions`` (the device lifecycle: approve .. revoke, one
function call each), ``models``, ``devices`` (reads), ``tokens`` (HTTP API tokens and
the claim throttle), ``audit`` (audit rows). :class:`bridge.store.Store` puts them
together as the one object callers hold. The SQL functions these call live in
``schemas/functions/``.
"""
