-- When the run that owns a job started (its claim): the worker time of each attempt, reported to analytics as the
-- owner's usage when the run ends (services/common/usage_events.py).
ALTER TABLE jobs ADD COLUMN run_start_time timestamptz;
