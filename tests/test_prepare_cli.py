"""What prepare tells its user: the help says that a parser weights file is code, and its progress bars
and the shard summary say what they count."""
import pytest

from fsfm_fast.prepare.__main__ import main


@pytest.mark.parametrize("command", ["parse", "pretrain-set"])
def test_help_says_the_parser_weights_file_is_code(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "-h"])
    assert stop.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--parser_weights" in help_text
    assert "A TorchScript file is a program, not data: loading it runs the code inside" in help_text
    assert "use only a file you trust as you would any program" in help_text


def test_progress_bars_name_their_stage_and_unit(tmp_path, capsys):
    pytest.importorskip("av")
    from fsfm_fast.data.synthetic_video import moving_face_frames
    from fsfm_fast.data.synthetic_video import write_video
    write_video(tmp_path / "in" / "clip.mp4", moving_face_frames(0, 2, 64, 48)[0], fps=4)
    assert main(["frames", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--num_frames", "1",
                 "--workers", "1"]) == 0
    # no terminal under pytest: the progress is a plain line (a terminal gets the bar, with the same names)
    out = capsys.readouterr().out
    assert "prepare frames: 1/1 input (100%), " in out and " input/s" in out


@pytest.mark.parametrize("per_shard, summary", [("0", "3 samples -> 1 shard of up to "),
                                                ("2", "3 samples -> 2 shards of up to 2 samples each")])
def test_the_shard_summary_says_what_it_counts(tmp_path, capsys, per_shard, summary):
    from _shard_helpers import palette_faces

    from fsfm_fast.data import make_shards
    faces = palette_faces(tmp_path / "faces", 3, 32)
    assert make_shards.main([str(faces), "--out", str(tmp_path / "shards"), "--workers", "1",
                             "--samples_per_shard", per_shard]) == 0
    err = capsys.readouterr().err
    assert summary in err and " samples each in " in err, err
