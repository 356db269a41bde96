"""Media domain shared by ingest and pipeline: probe, decode, scene detection, subtitles (pure, on ffmpeg)."""
