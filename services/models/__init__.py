"""Model classes that own pre/post-processing (CLIP, Sentence-BERT, Whisper), used unchanged inside Triton's
python backend (model_repository/*/1/model.py) and in-process by the torch backend. No grpc/tritonclient."""
