-- Visual vectors: one CLIP image embedding (512-d, normalized) per clip keyframe. `model` records the
-- model and weights version; searches only compare vectors of the model in use.
CREATE TABLE visual_vectors (
    id        uuid PRIMARY KEY REFERENCES clips (id) ON DELETE CASCADE,
    video_id  uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    model     text NOT NULL,
    embedding vector(512) NOT NULL
);
CREATE INDEX visual_vectors_hnsw ON visual_vectors USING hnsw (embedding vector_cosine_ops);
CREATE INDEX visual_vectors_video_idx ON visual_vectors (video_id);
CREATE INDEX transcript_vectors_model_idx ON transcript_vectors (model);
CREATE INDEX visual_vectors_model_idx ON visual_vectors (model);

-- What produced a video's vectors, so a changed model is detected (reindex needed) instead of mixed.
ALTER TABLE videos ADD COLUMN transcript_model text NOT NULL DEFAULT '';
ALTER TABLE videos ADD COLUMN visual_model text NOT NULL DEFAULT '';
