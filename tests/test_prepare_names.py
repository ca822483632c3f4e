"""prepare's output names: every input gets its own (issue: three different faces gave one output and
an unreadable video was never listed), the names are the same on every run so that a rerun resumes, and
a clash that cannot be avoided is a one-line error naming both files."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")
pytest.importorskip("dlib")

from fsfm_fast.runtime import cli  # noqa: E402
from fsfm_fast.data.synthetic_video import moving_face_frames  # noqa: E402
from fsfm_fast.data.synthetic_video import write_video  # noqa: E402
from fsfm_fast.prepare.__main__ import main  # noqa: E402
from fsfm_fast.prepare.inputs import scan  # noqa: E402
from fsfm_fast.prepare.runner import read_journals  # noqa: E402


def _prepare(*argv) -> int:
    return cli.run(main, "fsfm_fast.prepare", [str(a) for a in argv])


def _face(seed: int) -> np.ndarray:
    frames, _ = moving_face_frames(seed, 1)
    return frames[0]


def _skipped(out: Path) -> dict[str, str]:
    rows = [line.split("\t") for line in (out / "skipped.tsv").read_text().splitlines()[1:]]
    return {sample: reason for _, sample, reason in rows}


def test_images_that_share_a_name_each_get_their_own_face(tmp_path):
    """imgs/face.png, imgs/face.jpg and a top-level imgs__face.png are three faces: three crops."""
    src = tmp_path / "in"
    (src / "imgs").mkdir(parents=True)
    Image.fromarray(_face(1)).save(src / "imgs" / "face.png")
    Image.fromarray(_face(2)).save(src / "imgs" / "face.jpg", quality=95)
    Image.fromarray(_face(3)).save(src / "imgs__face.png")
    Image.fromarray(_face(4)).save(src / "imgs" / "alone.png")
    out = tmp_path / "out"
    assert _prepare("faces", "--input", src, "--out", out, "--workers", 1) == 0
    crops = sorted(p.stem for p in out.glob("*.png"))
    assert len(crops) == 4 and "imgs__alone" in crops  # a name nothing clashes with stays as it was
    assert len({Image.open(out / f"{name}.png").tobytes() for name in crops}) == 4  # four different faces
    assert len(read_journals(out)) == 4 and _skipped(out) == {}
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["outputs"] == 4 and manifest["complete"]


def test_clashing_names_are_stable_so_a_rerun_resumes(tmp_path):
    src = tmp_path / "in"
    (src / "imgs").mkdir(parents=True)
    for name in ("imgs/face.png", "imgs/face.jpg", "imgs__face.png", "imgs/v.mp4", "imgs/v_frame_3.png"):
        (src / name).write_bytes(b"x")
    first, again = scan(src), scan(src)
    assert [x.stem for x in first] == [x.stem for x in again]
    stems = {x.path.relative_to(src).as_posix(): x.stem for x in first}
    assert len(set(stems.values())) == 5
    assert all(s.startswith("imgs__face~") for k, s in stems.items() if "face" in k)
    # an image named like one of a video's frames would be overwritten by that frame
    assert stems["imgs/v.mp4"] != "imgs__v" and stems["imgs/v_frame_3.png"] != "imgs__v_frame_3"


def test_an_unreadable_video_beside_an_image_of_its_name_is_listed(tmp_path):
    """bad/zero.mp4 (empty) and bad/zero.png: both are inputs, both reach skipped.tsv (frames takes
    videos only), and two videos that share a name each give their own frames."""
    src = tmp_path / "in"
    (src / "bad").mkdir(parents=True)
    (src / "clips").mkdir()
    (src / "bad" / "zero.mp4").write_bytes(b"")
    Image.fromarray(_face(1)).save(src / "bad" / "zero.png")
    for k, name in enumerate(("clips/talk.mp4", "clips/talk.mkv", "clips__talk.mp4")):
        write_video(src / name, moving_face_frames(10 + k, 4, 64, 48)[0], fps=4)
    out = tmp_path / "out"
    assert _prepare("frames", "--input", src, "--out", out, "--num_frames", 2, "--workers", 1) == 0
    skipped = _skipped(out)
    assert set(skipped) == {str(src / "bad" / "zero.mp4"), str(src / "bad" / "zero.png")}
    assert "unreadable" in skipped[str(src / "bad" / "zero.mp4")]
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 6 and len({p.read_bytes() for p in frames}) == 6
    assert len(read_journals(out)) == 5
    # the same command again finds everything done and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in frames}
    assert _prepare("frames", "--input", src, "--out", out, "--num_frames", 2, "--workers", 1) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == before


def test_one_name_in_two_sources_of_a_class_is_an_error_naming_both(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        write_video(folder / "clip.mp4", moving_face_frames(0, 2, 64, 48)[0], fps=4)
    code = _prepare("finetune-set", "--source", f"real={a}", "--source", f"real={b}", "--out", tmp_path / "out",
                    "--num_frames", 1, "--workers", 1)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(a / "clip.mp4") in err and str(b / "clip.mp4") in err
