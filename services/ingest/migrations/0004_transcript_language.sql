-- The language of a video's transcript (issue 11): detected by speech recognition, or the tag of the subtitle
-- track or sidecar file it came from; '' when unknown. Rows from before keep ''.
ALTER TABLE videos ADD COLUMN transcript_language text NOT NULL DEFAULT '';
