-- Lexical match (issue 10): every transcript cue carries its tsvector, made by the search service with the text
-- search configuration of its settings (CLIPMIND_TEXT_SEARCH_CONFIG, `english` by default: stemming and stop
-- words), and a GIN index finds the cues that contain a query's words or phrases (retrieval.PgRetrieval.lexical).
-- Cues from before are given `english` here; a deployment with another configuration reindexes its videos.
ALTER TABLE transcript_segments ADD COLUMN tsv tsvector;
UPDATE transcript_segments SET tsv = to_tsvector('english'::regconfig, text);
CREATE INDEX transcript_segments_tsv_idx ON transcript_segments USING gin (tsv);
