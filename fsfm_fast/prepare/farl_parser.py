"""FaRL's LaPa face parser run from a TorchScript file, as the reference runs it, batched on a device.

The reference (``facer``'s ``farl/lapa/448``) aligns each face to a 448 x 448 template by a
similarity transform fitted to 5 landmarks (eye centres, nose tip, mouth corners), then tanh-warps it
(factor 0.8: the centre keeps its scale, the surroundings are squeezed in so hair and background
stay visible), runs the network on RGB in [0, 1], and samples the logits back into the original
image through the inverse warp; the label is the arg-max. Its 11 classes are LaPa's, in our order.

The weights file is loaded with ``torch.jit.load``: no package is imported that could download
anything. A TorchScript file is a program, not data (``weights_only`` does not apply to it): loading
and running it executes the code it holds, so it is to be trusted as any program is. The network must take ``[B, 3, 448, 448]`` float and return the logits ``[B, 11, 448, 448]``
or a tuple whose first item they are (the released file returns ``(logits, features)``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NAME = "farl_lapa448"
INPUT_SIZE = 448
WARP_FACTOR = 0.8
NUM_CLASSES = 11
# the 5-point template of a 512-px face, in [-1, 1] after dividing by 256 and subtracting 1
_TEMPLATE = torch.tensor([[196.0, 226.0], [316.0, 226.0], [256.0, 286.0], [220.0, 360.4], [292.0, 360.4]]) / 256.0 - 1.0


def template_points(size: int = INPUT_SIZE, face_scale: float = 1.0) -> torch.Tensor:
    return (_TEMPLATE * face_scale + 1.0) * (size - 1) / 2.0


def similarity_matrix(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 3]`` least-squares similarity (rotation, uniform scale, shift) taking ``src`` points
    ``[B, N, 2]`` onto ``dst`` ``[N, 2]`` or ``[B, N, 2]``: x' = a x + b y + tx, y' = -b x + a y + ty."""
    dst = dst.to(src).expand_as(src)
    ms, md = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s, d = src - ms, dst - md
    norm = s.square().sum((1, 2))
    a = (s * d).sum((1, 2)) / norm
    b = (s[..., 1] * d[..., 0] - s[..., 0] * d[..., 1]).sum(1) / norm
    tx = md[:, 0, 0] - a * ms[:, 0, 0] - b * ms[:, 0, 1]
    ty = md[:, 0, 1] + b * ms[:, 0, 0] - a * ms[:, 0, 1]
    one, zero = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([a, b, tx, -b, a, ty, zero, zero, one], -1).reshape(-1, 3, 3)


def _tanh_squeeze(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Coordinates in [-inf, inf] (-1..1 = the aligned square) -> warped [-1, 1]: linear in the centre,
    tanh beyond ``1 - factor``."""
    edge = 1.0 - factor
    outer = torch.tanh((x.abs() - edge) / factor) * factor + edge
    return torch.where(x.abs() > edge, outer * x.sign(), x)


def _tanh_unsqueeze(x: torch.Tensor, factor: float, eps: float = 1e-3) -> torch.Tensor:
    edge = 1.0 - factor
    inner = ((x.abs() - edge) / factor).clamp(max=1.0 - eps)
    outer = torch.atanh(inner) * factor + edge
    return torch.where(x.abs() > edge, outer * x.sign(), x)


def _pixel_grid(h: int, w: int, batch: int, device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                            torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
    return torch.stack([xs, ys], -1).reshape(1, h * w, 2).expand(batch, -1, -1)


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points @ matrix[:, :2, :2].transpose(1, 2) + matrix[:, :2, 2].unsqueeze(1)


def warp_grids(matrix: torch.Tensor, image_hw: tuple[int, int], size: int = INPUT_SIZE,
               factor: float = WARP_FACTOR) -> tuple[torch.Tensor, torch.Tensor]:
    """(grid sampling the image into the warped face, grid sampling the warped face back into the
    image), both ``[B, H, W, 2]`` for ``F.grid_sample(align_corners=False)``; ``matrix`` maps image
    pixels to aligned pixels."""
    b, (h, w) = matrix.shape[0], image_hw
    # warped pixel -> aligned pixel -> image pixel
    warped = _pixel_grid(size, size, b, matrix.device) / size * 2 - 1
    aligned = (_tanh_unsqueeze(warped, factor) + 1) / 2 * size
    image_pts = _apply(torch.linalg.inv(matrix), aligned)
    scale_img = torch.tensor([w, h], dtype=torch.float32, device=matrix.device)
    forward = (image_pts / scale_img * 2 - 1).reshape(b, size, size, 2)
    # image pixel -> aligned pixel -> warped pixel
    aligned = _apply(matrix, _pixel_grid(h, w, b, matrix.device)) / size * 2 - 1
    backward = _tanh_squeeze(aligned, factor).reshape(b, h, w, 2)
    return forward, backward


def load_torchscript(path, device) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--parser_weights {path}: no such file (FaRL's LaPa parser as TorchScript, "
                                "face_parsing.farl.lapa.main_ema_136500_jit191.pt)")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format FaRL released
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"--parser_weights {path}: not a TorchScript file ({str(exc).splitlines()[0]})") from None
    return net.eval()


class FarlParser:
    """LaPa-11 labels for batches of face crops and their 5 landmarks, with FaRL's TorchScript parser."""

    name = NAME

    def __init__(self, weights, device: str | torch.device = "cpu", batch_size: int = 16):
        self.device = torch.device(device)
        self.net = load_torchscript(weights, self.device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def parse_batch(self, images: list[np.ndarray], points5: list[np.ndarray]) -> list[np.ndarray]:
        """Labels ``[H, W]`` uint8 for RGB uint8 images and their ``[5, 2]`` points; images of one size
        share batches."""
        out: list[np.ndarray] = [np.empty(0)] * len(images)
        by_shape: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for members in by_shape.values():
            for start in range(0, len(members), self.batch_size):
                part = members[start:start + self.batch_size]
                for i, labels in zip(part, self._parse([images[i] for i in part], [points5[i] for i in part])):
                    out[i] = labels
        return out

    def _parse(self, images, points5) -> list[np.ndarray]:
        batch = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        points = torch.from_numpy(np.stack(points5).astype(np.float32)).to(self.device)
        matrix = similarity_matrix(points, template_points().to(self.device))
        forward, backward = warp_grids(matrix, batch.shape[-2:])
        warped = F.grid_sample(batch, forward, mode="bilinear", align_corners=False)
        logits = self.net(warped)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        if logits.ndim != 4 or logits.shape[1] != NUM_CLASSES:
            raise ValueError(f"the parser returned {tuple(logits.shape)}; expected [B, {NUM_CLASSES}, H, W] logits")
        back = F.grid_sample(logits.float(), backward, mode="bilinear", align_corners=False)
        return list(back.argmax(1).to(torch.uint8).cpu().numpy())
