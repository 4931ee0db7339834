"""repa's packed format: a few large memory-mapped .npy shards and a manifest.

    DEST/manifest.json          {"format": "repa-packed", "count", "resolution", "shard_size",
                                 "fields": {name: {"dtype", "shape"}}, "shards": [{"count", "files":
                                 {field: {"name", "bytes", "blake2b", "quick"}}}]}
    DEST/<field>-00000.npy      [shard_count, *shape] per field: images (uint8 [3,R,R]),
                                labels (int64), moments (float32 [2C,h,w])

Encoder features live in the same format in a folder of their own (`repa preprocess features`,
field `features`), attached per [[alignment]] entry: one dataset serves several encoders and
a cache can be added or dropped without repacking.

Reading a sample is a slice of a page-cached memory map: no decode, no per-file open.
Checksums at start: `quick` hashes each file's size, first and last MiB (catches truncation
and partial copies, not a flipped byte inside a shard); `full` hashes every byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from repa.errors import DataError
from repa.storage import entry_problem, require_space, write_atomic, writing
from repa.weights import file_digest

FORMAT, MANIFEST = "repa-packed", "manifest.json"


class PackWriter:
    """Fills shards in order; each finished shard is checksummed and recorded in the manifest,
    so an interrupted pack resumes at the first unfinished shard."""

    def __init__(self, dest: Path, count: int, resolution: int, fields: dict[str, tuple[str, tuple]],
                 shard_size: int = 8192, source: dict | None = None, shard_inputs=None, what: str = "packed data"):
        """source: what made the whole pack (e.g. the encoder and its settings); a folder holding a pack made
        from another source is refused. shard_inputs(start, stop) -> a digest of what made those samples
        (their files' sizes and times): a finished shard whose inputs changed is made again, with those after it."""
        self.dest, self.count, self.shard_size = Path(dest), count, shard_size
        self.source, self.shard_inputs = source, shard_inputs
        self.dest.mkdir(parents=True, exist_ok=True)
        self.fields = {k: {"dtype": d, "shape": list(s)} for k, (d, s) in fields.items()}
        existing = self._read_existing()
        if existing is not None and source is not None:
            self._refuse_other_source(existing, source, what)
        previous = existing if existing is not None and self._same_layout(existing) else None
        self.manifest = previous or {
            "format": FORMAT, "version": 1, "count": count, "resolution": resolution,
            "shard_size": shard_size, "fields": self.fields, "shards": [], "complete": False, "source": source,
        }
        self.changed_from = self._drop_changed_shards() if previous is not None else None
        self._open: dict[str, np.memmap] = {}
        self._shard = -1

    def _drop_changed_shards(self) -> int | None:
        """The first finished shard whose inputs changed since it was written (it and those after it are made
        again); None when every finished shard is current."""
        if self.shard_inputs is None:
            return None
        for k, shard in enumerate(self.manifest["shards"]):
            start = k * self.shard_size
            if shard.get("inputs") != self.shard_inputs(start, start + shard["count"]):
                self.manifest["shards"] = self.manifest["shards"][:k]
                self.manifest["complete"] = False
                return k
        return None

    def _read_existing(self) -> dict | None:
        path = self.dest / MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: unreadable ({e}); delete the folder to make it again") from None
        if not isinstance(manifest, dict):
            raise DataError(f"{path}: not a repa manifest; delete the folder to make it again")
        return manifest

    def _refuse_other_source(self, existing: dict, source: dict, what: str) -> None:
        """A folder holding data made from something else is never added to nor silently replaced."""
        recorded = existing.get("source")
        if recorded == source:
            return
        if not isinstance(recorded, dict):
            raise DataError(f"{self.dest}: holds {what} that does not record what made it (an older repa); "
                            "delete the folder to make them again")
        changed = sorted(k for k in set(source) | set(recorded) if source.get(k) != recorded.get(k))
        raise DataError(f"{self.dest}: holds {what} made with other settings ({', '.join(changed)} differ: "
                        f"{', '.join(f'{k} was {recorded.get(k)!r}' for k in changed)}); "
                        "choose another folder, or delete this one to make them again")

    def _same_layout(self, manifest: dict) -> bool:
        """A partial pack of the same count, fields and shard size resumes; anything else starts over."""
        return (manifest.get("count") == self.count and manifest.get("fields") == self.fields
                and manifest.get("shard_size") == self.shard_size and isinstance(manifest.get("shards"), list))

    @property
    def done_until(self) -> int:
        """Samples already in finished shards (resume from here)."""
        return sum(s["count"] for s in self.manifest["shards"])

    def _file(self, name: str, shard: int) -> Path:
        return self.dest / f"{name}-{shard:05d}.npy"

    def _start_shard(self, shard: int) -> None:
        """Memory-mapped shard files; their space is checked first, since a write into a mapped page
        of a full disk kills the process (SIGBUS) instead of raising."""
        n = min(self.shard_size, self.count - shard * self.shard_size)
        files = [self._file(name, shard) for name in self.fields]
        needed = sum(n * np.dtype(f["dtype"]).itemsize * int(np.prod(f["shape"])) for f in self.fields.values())
        with writing(files[0], needed, temporary=files):
            require_space(self.dest, needed)
            self._open = {
                name: np.lib.format.open_memmap(path, mode="w+", dtype=f["dtype"], shape=(n, *f["shape"]))
                for path, (name, f) in zip(files, self.fields.items())
            }
        self._shard = shard

    def write(self, index: int, **values) -> None:
        shard = index // self.shard_size
        if shard != self._shard:
            self._start_shard(shard)
        for name, value in values.items():
            self._open[name][index - shard * self.shard_size] = value
        if index + 1 == min(self.count, (shard + 1) * self.shard_size):
            self._finish_shard(shard)

    def _finish_shard(self, shard: int) -> None:
        files = {}
        for name, array in self._open.items():
            array.flush()
            path = self._file(name, shard)
            files[name] = {"name": path.name, "bytes": path.stat().st_size,
                           "blake2b": file_digest(path), "quick": file_digest(path, quick=True)}
        count = len(next(iter(self._open.values())))
        self._open, self._shard = {}, -1
        record = {"count": count, "files": files}
        if self.shard_inputs is not None:
            record["inputs"] = self.shard_inputs(shard * self.shard_size, shard * self.shard_size + count)
        self.manifest["shards"].append(record)
        self.manifest["complete"] = self.done_until == self.count
        write_atomic(self.dest / MANIFEST, json.dumps(self.manifest, indent=1))


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: missing; create the packed dataset with `repa preprocess pack SRC {root}`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); re-run `repa preprocess pack`") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    if not manifest.get("complete"):
        raise DataError(f"{path}: packing did not finish ({sum(s['count'] for s in manifest['shards'])} of "
                        f"{manifest['count']} samples); re-run `repa preprocess pack` to resume")
    for shard in manifest.get("shards", []):  # before anything is opened or memory-mapped
        for entry in shard.get("files", {}).values():
            problem = entry_problem(root, entry.get("name") if isinstance(entry, dict) else entry)
            if problem:
                raise DataError(f"{path}: {problem}; refused (a packed manifest names the shards in its folder)")
    return manifest


def verify(root: Path, manifest: dict, mode: str) -> None:
    for shard in manifest["shards"]:
        for entry in shard["files"].values():
            path = root / entry["name"]
            if not path.is_file():
                raise DataError(f"{path}: missing shard file listed in {root / MANIFEST}")
            if path.stat().st_size != entry["bytes"]:
                raise DataError(f"{path}: {path.stat().st_size} bytes, the manifest says {entry['bytes']} "
                                "(truncated or replaced); re-run `repa preprocess pack`")
            if mode == "none":
                continue
            key, quick = ("quick", True) if mode == "quick" else ("blake2b", False)
            if file_digest(path, quick=quick) != entry[key]:
                raise DataError(f"{path}: checksum mismatch ({'quick' if quick else 'full'} blake2b); the file is "
                                "corrupt; re-run `repa preprocess pack` for it")
