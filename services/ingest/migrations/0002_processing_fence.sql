-- Processing reports arrive over IngestInternalService.UpdateVideoProcessing, fenced: `processing_fence` is
-- the fence of the last update accepted, and an update with a lower one (a cancelled or taken-over run) is
-- refused. `generation` names the video's processing job (job_id_for(id, generation)), so showing the job
-- needs no query of the pipeline's tables. `revision` grows with every change: the search service keeps the
-- newest copy of the facts it receives.
ALTER TABLE videos ADD COLUMN generation bigint NOT NULL DEFAULT 1;
ALTER TABLE videos ADD COLUMN processing_fence bigint NOT NULL DEFAULT 0;
ALTER TABLE videos ADD COLUMN revision bigint NOT NULL DEFAULT 1;

-- Publish every video's facts to the search service once (its copy starts empty); the payload of topic
-- `search.video_facts` is the video id, and the relay sends the row as it is at delivery time.
INSERT INTO outbox (topic, payload) SELECT 'search.video_facts', convert_to(id::text, 'UTF8') FROM videos;
