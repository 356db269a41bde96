-- Who searched (issue 9: the search log is the user's). Searches logged before have no known user: the nil
-- UUID (the system's own id), which no user has, so no user's report ever counts them as theirs.
ALTER TABLE searches ADD COLUMN user_id uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000';
-- A user's searches by time (their history and reports) without scanning everyone's.
CREATE INDEX searches_user_time_idx ON searches (user_id, search_time);
