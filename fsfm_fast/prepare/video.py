"""Reading frames out of videos, with PyAV (FFmpeg inside the wheel).

Why PyAV: its wheels carry FFmpeg (libx264, libvpx, NVDEC), so ``pip install av`` is all a machine
needs; torchcodec needs FFmpeg installed on the system, and decord has not been released since 2021.
PyAV seeks by timestamp to the keyframe before a wanted frame and decodes forward from there, so
sampling N frames out of a long video decodes a few groups of pictures, not the whole stream
(``benchmarks/bench_prepare.py`` measures both ways).

Frame ``i`` is the ``i``-th frame in presentation order, counted from the stream's first timestamp at
the stream's average rate; this is exact for constant-frame-rate videos (FaceForensics++, Celeb-DF,
DFDC) and the usual approximation for variable rates.
"""
from __future__ import annotations

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
# Decoding forward is cheaper than a seek (which restarts at a keyframe) for gaps up to about a
# group of pictures; x264's default keyframe interval is 250 frames, most datasets use 12 to 250.
SEEK_GAP = 48


class VideoError(Exception):
    """A video that cannot be used: unreadable, no video stream, no frames. The message says why."""


def _av():
    try:
        import av
    except ImportError as exc:  # the [prepare] extra is missing
        raise ImportError("reading videos needs PyAV: pip install 'fsfm_fast[prepare]' (or pip install av)") from exc
    return av


def sample_indices(total: int, n: int) -> list[int]:
    """``n`` frame indices spread uniformly over ``total`` frames, first and last included (the
    reference's ``linspace``); a video with fewer than ``n`` frames gives each of its frames once."""
    if total <= 0 or n <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, total - 1, n, dtype=np.int64)})


def _open(path, hwaccel: str | None):
    av = _av()
    options = {}
    if hwaccel is not None:
        from av.codec.hwaccel import HWAccel
        options["hwaccel"] = HWAccel(device_type=hwaccel, allow_software_fallback=True)
    try:
        container = av.open(str(path), **options)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        if hwaccel is not None:  # no usable GPU decoder here: decode on the CPU instead
            return _open(path, None)
        raise VideoError(f"unreadable video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream")
    return container


def _stream_frames(container) -> int:
    """Frame count from the header, else from duration x rate; 0 when neither is known."""
    stream = container.streams.video[0]
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base and rate:
        return int(round(float(stream.duration * stream.time_base * rate)))
    if container.duration and rate:
        return int(round(container.duration / 1e6 * float(rate)))
    return 0


def count_frames(path) -> int:
    """Number of frames a video announces (its header, else duration x rate); raises VideoError."""
    with _open(path, None) as container:
        return _stream_frames(container)


def _frame_index(frame, stream, start: int, rate) -> int:
    if frame.pts is None or not rate:
        return -1
    return int(round(float((frame.pts - start) * stream.time_base * rate)))


def sample_frames(path, n: int, *, seek_gap: int = SEEK_GAP, hwaccel: str | None = None
                  ) -> list[tuple[int, np.ndarray]]:
    """``n`` frames spread uniformly over a video: ``[(index, RGB uint8 [H, W, 3]), ...]`` in order.

    Seeks to each wanted frame that lies more than ``seek_gap`` frames ahead of the decoder, and decodes
    forward otherwise. Frames the header promised but the stream does not hold, and frames that do not
    decode (the sampler seeks past them to the next wanted frame), are missing from the result (compare
    the indices with ``sample_indices``). ``hwaccel="cuda"`` asks FFmpeg to decode
    on the GPU (NVDEC), falling back to the CPU when it cannot. Raises VideoError for an unreadable
    video or one without frames.
    """
    av = _av()
    with _open(path, hwaccel) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = _stream_frames(container)
        rate = stream.average_rate or stream.guessed_rate
        if total <= 0 or not rate:
            return _sample_by_decoding_all(container, n)
        start = stream.start_time or 0
        wanted = sample_indices(total, n)
        out, position, frames, errors = [], None, None, []
        for target in wanted:
            try:
                if position is None or target - position > seek_gap or target < position:
                    offset = int(target / rate / stream.time_base) + start
                    container.seek(offset, stream=stream, backward=True, any_frame=False)
                    frames = container.decode(stream)
                for frame in frames:
                    position = _frame_index(frame, stream, start, rate)
                    if position >= target:
                        out.append((target, frame.to_ndarray(format="rgb24")))
                        break
                else:
                    break  # the stream ended before this frame: the header overstated its length
            except (av.FFmpegError, ValueError) as exc:
                # a corrupt stretch costs the frames in it: seek afresh to the next wanted frame
                errors.append(exc)
                position = None
    if not out:
        raise VideoError(f"undecodable video ({errors[0]})" if errors else "no decodable frames")
    return out


def _sample_by_decoding_all(container, n: int) -> list[tuple[int, np.ndarray]]:
    """For streams that do not announce their length: decode everything once, keep the wanted frames."""
    av = _av()
    try:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    except (av.FFmpegError, ValueError) as exc:
        raise VideoError(f"undecodable video ({exc})") from None
    if not frames:
        raise VideoError("no decodable frames")
    return [(i, frames[i]) for i in sample_indices(len(frames), n)]


def decode_all_frames(path) -> list[np.ndarray]:
    """Every frame of a video, in order (the baseline ``sample_frames`` is measured against)."""
    with _open(path, None) as container:
        av = _av()
        try:
            return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
        except (av.FFmpegError, ValueError) as exc:
            raise VideoError(f"undecodable video ({exc})") from None
