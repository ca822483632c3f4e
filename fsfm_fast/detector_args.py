"""The flags of the verbs that use a trained detector: ``python -m fsfm_fast.evaluate``, ``export`` and
``predict``. Torch-free, so that ``-h`` and a bad flag answer before the verbs' modules (torch, timm)
are imported; the descriptions are the verbs' module texts. What needs more than one flag, or the
file system, is checked by each verb's ``main`` before any work."""
from __future__ import annotations

from . import demo
from .models.configs import list_models
from .prepare.faces import CROP_SCALE, DEFAULT_UPSAMPLE, DETECTORS
from .runtime import cli, flags

THRESHOLD_HELP = "score (P(fake), P(attack)) at or above which {what} is called the positive class"


def evaluate_parser():
    p = cli.argument_parser("fsfm_fast.evaluate", cli.module_doc("fsfm_fast.evaluate"))
    p.add_argument("--checkpoint", default=None, type=flags.path("exists"),
                   help="a detector checkpoint of fsfm_fast.finetune or finetune_fas, or an export folder of "
                        "fsfm_fast.export (default: the demo detector)")
    p.add_argument("--test", action="append", default=[], metavar="NAME=PATH[,PATH...]",
                   help="a test set; repeat for several (default: the demo's synthetic test set). PATH: a dataset "
                        "root, a folder of class folders, a split file, or dfb:JSON[:SPLIT[:COMPRESSION[:METHODS[:ROOT]]]]")
    p.add_argument("--output_dir", default=None, help="default: <checkpoint folder>/eval, or <export folder>/eval")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of another evaluation (other checkpoint or test sets) in --output_dir")
    flags.add_batch_flag(p, 64)
    flags.add_worker_flag(p, 4)
    flags.add_device_flags(p)
    p.add_argument("--eval_resize", default=None, choices=["crop", "plain"],
                   help="override the detector's: crop = resize to img_size/0.875 and centre crop, "
                        "plain = resize to img_size")
    p.add_argument("--class_map", action="append", default=[], metavar="NAME=real|fake[,...]",
                   help="label class folders the naming rule does not know")
    add_runtime_flag(p)
    p.add_argument("--threshold", default=None, type=flags.probability,
                   help=THRESHOLD_HELP.format(what="a sample") + ", for the accuracies (default: the detector's "
                        "recorded threshold, else 0.5)")
    return p


def export_parser():
    p = cli.argument_parser("fsfm_fast.export", cli.module_doc("fsfm_fast.export"))
    p.add_argument("--checkpoint", default=None, type=flags.path("exists"),
                   help="a checkpoint file or an export folder (default: the demo detector of fsfm_fast.finetune, "
                        "else the demo pretraining)")
    p.add_argument("--output_dir", default=None,
                   help=f"default: <checkpoint folder>/export ({demo.EXPORT_DIR} for the demo)")
    p.add_argument("--encoder", default=None, choices=["online", "target"],
                   help="which encoder of a pretraining checkpoint (default: online; a release file holds one)")
    p.add_argument("--model", default=None, choices=list_models(),
                   help="the FSFM size, for a state_dict that does not say (default: read from the weights' shapes)")
    p.add_argument("--encoder_only", action="store_true", help="drop a detector's head (the model returns features)")
    p.add_argument("--onnx", action="store_true", help="also write the ONNX model (dynamic batch), checked by onnxruntime")
    p.add_argument("--threshold", default=None, type=flags.probability,
                   help="record this decision threshold on the score (P(fake), P(attack)), replacing the one the "
                        "detector records; choose it on held-out data, never the test set")
    p.add_argument("--labels", default=None, metavar="NAME,NAME",
                   help="class names in class-index order, for a state_dict that does not say (e.g. real,fake)")
    p.add_argument("--mean_std", default=None, type=flags.path("file"), help="a pretrain_ds_mean_std.txt to record instead of the checkpoint's")
    p.add_argument("--normalize_from_IMN", action="store_true", help="record ImageNet's mean/std")
    return p


def predict_parser():
    p = cli.argument_parser("fsfm_fast.predict", cli.module_doc("fsfm_fast.predict"))
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="images, videos, or folders of them")
    p.add_argument("--detector", default=None,
                   help="an export folder (fsfm_fast.export) or a detector checkpoint (finetune, finetune_fas; whole "
                        "or FS-Adapter)")
    p.add_argument("--model", default=None, dest="old_detector", metavar="DETECTOR",
                   help="the former name of --detector (elsewhere --model names an architecture)")
    p.add_argument("--demo", action="store_true", help="score synthetic real and fake videos with the demo detector")
    p.add_argument("--threshold", default=None, type=flags.probability,
                   help=THRESHOLD_HELP.format(what="an input") + " (default: the detector's recorded threshold, "
                        "else 0.5)")
    p.add_argument("--output", default=None, help="write the scores here: .csv for CSV, anything else JSON lines")
    p.add_argument("--save_faces", default=None, metavar="PNG", help="write a contact sheet of the scored faces")
    p.add_argument("--sheet_max", default=64, type=flags.positive, help="most faces on the contact sheet")
    p.add_argument("--face_detector", default="dlib_hog", choices=list(DETECTORS) + ["none"],
                   help="none: each image or frame is already a face crop; dlib_cnn: slower, finds more faces")
    p.add_argument("--upsample", default=DEFAULT_UPSAMPLE, type=int, choices=[0, 1, 2, 3],
                   help="dlib detectors: times the image is doubled first (1: faces down to ~40 px, as prepare)")
    p.add_argument("--crop_scale", default=CROP_SCALE, type=flags.number(0.0, low_open=True),
                   help="face crop side / detector box side")
    p.add_argument("--num_frames", default=16, type=flags.positive, help="frames sampled uniformly from each video")
    flags.add_batch_flag(p, 64)
    p.add_argument("--num_workers", default=min(4, cli.available_cpus()), type=flags.count,
                   help="processes that read inputs and detect faces; 0: in this process")
    flags.add_device_flags(p)
    add_runtime_flag(p)
    return p


def add_runtime_flag(parser) -> None:
    parser.add_argument("--runtime", default="auto", choices=flags.RUNTIMES,
                        help="for an export folder: onnx = its model.onnx through onnxruntime on the CPU, torch = "
                             "PyTorch on --device, auto = onnx when the export holds model.onnx, onnxruntime imports "
                             "and the device is the CPU")
