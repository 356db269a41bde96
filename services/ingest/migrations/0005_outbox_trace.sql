-- The W3C trace context (JSON: traceparent, tracestate) of the request that added each fact, so that its delivery
-- by any replica, even after a restart, continues that request's trace (services/common/outbox.py); '' for none.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS trace_context text NOT NULL DEFAULT '';
