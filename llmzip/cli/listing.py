"""``llmzip list``: what an archive holds, read from its header or index without decoding."""

from __future__ import annotations

import io
from typing import Any

from .files import Options, open_input


def _ratio(archive: int, original: int) -> dict[str, Any]:
    return {"ratio": round(archive / original, 4) if original else None,
            "bits_per_byte": round(8 * archive / original, 4) if original else None}


def _mixing(mix_params: bytes) -> dict[str, Any] | None:
    from ..mixparams import MixParams

    return MixParams.from_bytes(mix_params).describe() if mix_params else None


def _v1_info(name: str, blob: bytes) -> dict[str, Any]:
    from ..container import read_archive

    header, segments = read_archive(blob)
    original = header.original_size
    return {
        "file": name, "format_version": 1, "original_size": original, "archive_size": len(blob),
        **_ratio(len(blob), original), "frames": 1,
        "methods": {"lm": {"frames": 1, "original": original, "payload": len(blob)}},
        "model_id": header.model_id, "fingerprint": header.fingerprint.hex(), "engine": header.engine,
        "token_count": header.token_count, "chunk_tokens": header.chunk_tokens,
        "group_chunks": header.group_chunks, "segments": len(segments), "checksum": header.checksum.hex(),
        "mixing": _mixing(header.mix_params if header.mixing else b""),
    }


def _v2_info(name: str, stream: Any, size: int) -> dict[str, Any]:
    from ..frames import METHOD_NAMES
    from ..frames.info import stream_info

    info = stream_info(stream, size)
    models = {(f.model_id, f.fingerprint.hex(), f.engine) for f in info.lm_fields.values()}
    frames = []
    for f in info.frames:
        entry = {"index": f.index, "offset": f.offset, "input_offset": f.input_offset,
                 "method": METHOD_NAMES.get(f.method, str(f.method)), "original": f.raw_size,
                 "payload": f.payload_size}
        fields = info.lm_fields.get(f.index)
        if fields is not None:
            entry.update(model_id=fields.model_id, fingerprint=fields.fingerprint.hex(), engine=fields.engine,
                         token_count=fields.token_count, chunk_tokens=fields.chunk_tokens,
                         group_chunks=fields.group_chunks, mixing=_mixing(fields.mix_params))
        frames.append(entry)
    return {
        "file": name, "format_version": 2, "original_size": info.original_size, "archive_size": size,
        **_ratio(size, info.original_size), "frames": len(info.frames), "methods": info.method_mix(),
        "models": [{"model_id": m, "fingerprint": fp, "engine": e} for m, fp, e in sorted(models)],
        "frame_list": frames,
    }


def archive_info(name: str, force: bool) -> dict[str, Any]:
    """The fields ``list`` shows for one archive of either format (index and sizes checked)."""
    from ..frames import format_version

    with open_input(name, Options(mode="list", force=force)) as src:
        if src.seekable():
            size = src.seek(0, io.SEEK_END)
            src.seek(0)
        else:
            src = io.BytesIO(src.read())
            size = len(src.getvalue())
        if format_version(src.read(5)) == 1:
            src.seek(0)
            return _v1_info(name, src.read())
        return _v2_info(name, src, size)


LIST_HEAD = f"{'archive':>10} {'original':>10} {'ratio':>6} {'bits/B':>6} {'frames':>6}  {'methods':<28}  model  file"


def method_mix(info: dict[str, Any]) -> str:
    """``lm 92%,ppmd 8%``: each method's share of the original bytes."""
    total = info["original_size"]
    if not total:
        return "-"
    return ",".join(f"{m} {100 * v['original'] / total:.0f}%" for m, v in info["methods"].items())


def list_line(i: dict[str, Any]) -> str:
    ratio, bpb = (f"{i['ratio']:.3f}", f"{i['bits_per_byte']:.2f}") if i["original_size"] else ("-", "-")
    models = [i["model_id"]] if i["format_version"] == 1 else [m["model_id"] for m in i["models"]]
    return (f"{i['archive_size']:>10} {i['original_size']:>10} {ratio:>6} {bpb:>6} {i['frames']:>6}  "
            f"{method_mix(i):<28}  {','.join(models) or '-'}  {i['file']}")
