"""The wire contract between the inference client (services.inference.triton) and the Triton python backends
(services/models/triton_backend.py, model_repository/*/1/model.py): model names, tensor names, the settings
that name weights, and the markers of errors. Both sides take these names from here, never from a copy.

Standard library only: this module is imported inside tritonserver's python-backend stub, which has neither
grpc, nor a database driver, nor the rest of the mesh.
"""

from __future__ import annotations

from typing import Final

# ---- Model names (Triton's model directories; the ``ModelName`` values of services.inference.ports) ------

CLIP_IMAGE: Final = "clip_image"
CLIP_TEXT: Final = "clip_text"
SBERT: Final = "sbert"
WHISPER: Final = "whisper"

# ---- Tensors -----------------------------------------------------------------------------------------------

#: clip_text, sbert: raw UTF-8 strings, TYPE_STRING [batch, 1].
TEXT: Final = "TEXT"
#: clip_image: encoded image bytes, TYPE_STRING [batch, 1].
IMAGE: Final = "IMAGE"
#: whisper: mono float32 samples, TYPE_FP32 [samples].
AUDIO: Final = "AUDIO"
#: clip_image, clip_text, sbert: unit-norm vectors, TYPE_FP32 [batch, dim].
EMBEDDING: Final = "EMBEDDING"
#: clip_image: "" or why that image failed, TYPE_STRING [batch, 1] (see :func:`item_error`).
ERROR: Final = "ERROR"
#: every model: the id to store next to vectors, TYPE_STRING [batch, 1] ([1] for whisper).
MODEL_ID: Final = "MODEL_ID"
#: whisper: one JSON document, a list of ``{SEGMENT_START, SEGMENT_END, SEGMENT_TEXT}`` objects (seconds).
SEGMENTS: Final = "SEGMENTS"
#: whisper: the detected language.
LANGUAGE: Final = "LANGUAGE"

SEGMENT_START: Final = "start"
SEGMENT_END: Final = "end"
SEGMENT_TEXT: Final = "text"

# ---- Settings that provide each model's weights (tritonserver's environment, the mesh's settings) -------

CLIP_WEIGHTS_SETTING: Final = "CLIPMIND_CLIP_WEIGHTS"
CLIP_ARCH_SETTING: Final = "CLIPMIND_CLIP_ARCH"
SBERT_WEIGHTS_SETTING: Final = "CLIPMIND_SBERT_WEIGHTS"
WHISPER_WEIGHTS_SETTING: Final = "CLIPMIND_WHISPER_WEIGHTS"
MODEL_SEED_SETTING: Final = "CLIPMIND_MODEL_SEED"
#: Where prepared weights live (Whisper's joined CTranslate2 files): default ~/.cache/clipmind/models.
MODEL_CACHE_SETTING: Final = "CLIPMIND_MODEL_CACHE"
#: CPU threads of faster-whisper (0 or unset: up to 4).
WHISPER_THREADS_SETTING: Final = "CLIPMIND_WHISPER_THREADS"

#: The setting that provides each model's weights (named in statuses and errors).
WEIGHTS_SETTING: Final[dict[str, str]] = {
    CLIP_IMAGE: CLIP_WEIGHTS_SETTING,
    CLIP_TEXT: CLIP_WEIGHTS_SETTING,
    SBERT: SBERT_WEIGHTS_SETTING,
    WHISPER: WHISPER_WEIGHTS_SETTING,
}

# ---- Errors ------------------------------------------------------------------------------------------------

#: First word of the message a model answers every request with while it is off (its default weights cannot
#: be had), sent with ``OFF_ERROR_CODE``; a client tells "off" from "Triton down" by it.
OFF_MARKER: Final = "MODEL_OFF"
#: The ``pb_utils.TritonError`` code of that answer, and the gRPC status a client sees for it.
OFF_ERROR_CODE: Final = "UNSUPPORTED"
OFF_GRPC_STATUS: Final = "UNIMPLEMENTED"


def off_message(detail: str) -> str:
    """The message of a model that is off: ``MODEL_OFF: <detail>``."""
    return f"{OFF_MARKER}: {detail}"


def off_detail(message: str) -> str:
    """``MODEL_OFF: <detail>`` → ``<detail>`` (a message without the marker is returned as it is)."""
    return message.removeprefix(OFF_MARKER).lstrip(": ")


#: How an item of a batch is named in its own error: ``images[i]`` by the model classes (numbered across the
#: whole dynamic batch), ``IMAGE[j]`` / ``TEXT[j]`` by the Triton backend (numbered within one request).
MODEL_ITEM: Final = "images"


def item_error(collection: str, index: int, detail: str) -> str:
    """``item_error("IMAGE", 3, "is not a decodable image: …")`` → ``"IMAGE[3] is not a decodable image: …"``."""
    return f"{collection}[{index}] {detail}"


def item_error_detail(message: str) -> str:
    """``"images[3] is not a decodable image: …"`` → ``"is not a decodable image: …"``: whoever numbers items
    differently (the backend per request, the client per call) re-adds its own index."""
    for prefix in (f"{MODEL_ITEM}[", f"{IMAGE}[", f"{TEXT}["):
        if message.startswith(prefix) and "] " in message:
            return message.split("] ", 1)[1]
    return message
