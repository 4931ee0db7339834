"""Finding encoder weights on this machine, fetching the ones with a public URL when online,
and otherwise saying exactly what to download and where to put it."""

from __future__ import annotations

from pathlib import Path

from repa.components.encoder.specs import EncoderSpec, candidate_files, present_file
from repa.errors import MissingWeightsError
from repa.weights import download, hf_repo_dir, hub_offline, reachable, torch_hub_checkpoints


def _fetch(spec: EncoderSpec) -> Path | None:
    """Download into the usual cache when the network is there (never hangs: 3 s probe first)."""
    if hub_offline():
        return None
    if spec.hub_file and reachable("dl.fbaipublicfiles.com"):
        return download(spec.url, torch_hub_checkpoints() / spec.hub_file)
    if spec.hf_repo and reachable("huggingface.co"):
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(spec.hf_repo, spec.hf_files[0]))
    return None


def missing_message(spec: EncoderSpec, weights: str | None) -> str:
    places = [str(p) for p in candidate_files(spec, weights)]
    target = places[0]
    where = f" (or set weights = \"/path/to/file\" in its table: encoder = {{ kind = \"{spec.name}\", weights = \"...\" }})"
    if weights and spec.hf_repo and not spec.hub_file:
        return (f"{spec.name}: weights file {weights} does not exist; save {spec.hf_files[0]} from the Hugging Face "
                f"repo {spec.hf_repo} (`huggingface-cli download {spec.hf_repo} {spec.hf_files[0]}`) there")
    if weights:
        return f"{spec.name}: weights file {weights} does not exist; download {spec.url} and save it there"
    offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
    if spec.hf_repo and not spec.hub_file:
        return (
            f"{spec.name}: weights not found{offline}; looked in: {'; '.join(places)}. On a machine with "
            f"internet run `huggingface-cli download {spec.hf_repo} {spec.hf_files[0]}` and copy its Hugging Face "
            f"cache folder {hf_repo_dir(spec.hf_repo).name} into {hf_repo_dir(spec.hf_repo).parent}{where}"
        )
    return (
        f"{spec.name}: weights not found{offline}; looked in: {'; '.join(places)}. "
        f"Download {spec.url} and save it as {target}{where}"
    )


def locate_weights(spec: EncoderSpec, weights: str | None) -> Path:
    found, failure = present_file(spec, weights), ""
    if found is None and not weights:
        try:
            found = _fetch(spec)
        except Exception as exc:  # any network/HTTP failure: say so, then say what to do by hand
            failure = f" [download failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}]"
    if found is None:
        raise MissingWeightsError(missing_message(spec, weights) + failure)
    return found
