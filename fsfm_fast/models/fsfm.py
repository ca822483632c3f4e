"""FSFM-3C online and target networks, with state_dict keys of the reference release (SPEC §3)."""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from fsfm_fast import ops
from fsfm_fast.formats import safe_load, state_mismatch
from fsfm_fast.models.configs import REP_POS_EMBEDS, ModelConfig, get_config
from fsfm_fast.models.pos_embed import sincos_2d

_norm_layer = functools.partial(nn.LayerNorm, eps=1e-6)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=_norm_layer) for _ in range(depth)
    )


def _fixed_pos_embed(dim: int, grid: tuple[int, int], init: str = "sincos") -> nn.Parameter:
    # A frozen Parameter rather than a buffer: the reference checkpoints store it under this key
    # and the reference EMA walks named_parameters(), so both must see it.
    if init == "zeros":
        return nn.Parameter(torch.zeros(1, grid[0] * grid[1] + 1, dim), requires_grad=False)
    return nn.Parameter(sincos_2d(dim, grid).unsqueeze(0), requires_grad=False)


class ProjectionMLP(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Linear, used as both projector and predictor."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.projection_head = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(x)


class FSFMTrunk(nn.Module):
    """Encoder, representation decoder and projector: what the online and target networks share.

    ``rep_decoder_pos_embed``: "zeros" (default) as the reference, which builds that frozen tensor
    as zeros and never fills it, so every released model was pretrained with zeros there (SPEC
    section 3); "sincos" fills it like the other position embeddings, for ablations.
    """

    def __init__(self, config: ModelConfig, img_size: int = 224, ops_backend: str = "auto",
                 name: str | None = None, rep_decoder_pos_embed: str = "zeros"):
        super().__init__()
        c = config
        p = c.patch_size
        if c.rep_dim != c.embed_dim:
            # The pixel decoder fills hidden encoder tokens with the rep decoder's mask token, and
            # the projector reads the rep decoder's output in encoder width: both need equal dims.
            raise ValueError(f"config for {name}: rep_dim {c.rep_dim} must equal embed_dim {c.embed_dim}")
        if not isinstance(img_size, int) or img_size <= 0 or img_size % p:
            raise ValueError(f"img_size must be a positive multiple of the patch size {p}, got {img_size}")
        if rep_decoder_pos_embed not in REP_POS_EMBEDS:
            raise ValueError(f"rep_decoder_pos_embed must be one of {REP_POS_EMBEDS}, got {rep_decoder_pos_embed!r}")
        self.config = c
        self.model_name = name
        self.patch_size = p
        self.img_size = img_size
        self.grid = (img_size // p, img_size // p)
        self.num_patches = self.grid[0] * self.grid[1]
        self.ops_backend = ops_backend
        self.rep_pos_init = rep_decoder_pos_embed

        self.patch_embed = PatchEmbed(img_size, p, 3, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = _fixed_pos_embed(c.embed_dim, self.grid)
        self.blocks = _blocks(c.embed_dim, c.depth, c.num_heads, c.mlp_ratio)
        self.norm = _norm_layer(c.embed_dim)

        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.rep_dim))
        self.rep_decoder_embed = nn.Linear(c.embed_dim, c.rep_dim)
        self.rep_decoder_pos_embed = _fixed_pos_embed(c.rep_dim, self.grid, rep_decoder_pos_embed)
        self.rep_decoder_blocks = _blocks(c.rep_dim, c.rep_depth, c.rep_heads, c.mlp_ratio)
        self.rep_decoder_norm = _norm_layer(c.rep_dim)
        self.rep_decoder_pred = nn.Linear(c.rep_dim, c.embed_dim)

        self.projector = ProjectionMLP(c.embed_dim, c.proj_hidden, c.proj_dim)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """MAE initialisation; subclasses call it once all their modules exist."""
        # Every Linear gets xavier, the projector/predictor heads included: the reference builds
        # its heads with kaiming init and then overwrites them with this same model-wide pass.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def check_images(self, images: torch.Tensor) -> None:
        s = self.img_size
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (s, s):
            raise ValueError(
                f"images must be [B, 3, {s}, {s}] for {self.model_name or type(self).__name__} built with "
                f"img_size={s}, got {list(images.shape)}"
            )

    def encode(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None,
               validate: bool = True) -> torch.Tensor:
        """Encoder over the patches listed in ids_keep (all patches when None) -> [B, 1+K, D]."""
        if ids_keep is None:
            x = self.patch_embed(images) + self.pos_embed[:, 1:]
        else:
            proj = self.patch_embed.proj
            x = ops.gather_visible(images, ids_keep, proj.weight, proj.bias, self.pos_embed[0, 1:],
                                   backend=self.ops_backend, validate=validate)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def decode_rep(self, latent: torch.Tensor, ids_restore: torch.Tensor | None = None,
                   validate: bool = True) -> torch.Tensor:
        """Representation decoder -> [B, 1+L, D]; ids_restore None: latent already holds all L patches."""
        x = self.rep_decoder_embed(latent)
        if ids_restore is None:
            x = x + self.rep_decoder_pos_embed
        else:
            x = ops.restore_masked(x, ids_restore, self.mask_token, self.rep_decoder_pos_embed[0],
                                   backend=self.ops_backend, validate=validate)
        for blk in self.rep_decoder_blocks:
            x = blk(x)
        return self.rep_decoder_pred(self.rep_decoder_norm(x))

    def project(self, rep: torch.Tensor) -> torch.Tensor:
        """Projector on the mean over all 1+L tokens (cls included, as in the reference) -> [B, proj_dim]."""
        return self.projector(rep.mean(dim=1))


class TargetNetwork(FSFMTrunk):
    """The EMA branch: sees the whole face, returns its L2-normalised projection."""

    def __init__(self, config: ModelConfig, img_size: int = 224, ops_backend: str = "auto",
                 name: str | None = None, rep_decoder_pos_embed: str = "zeros"):
        super().__init__(config, img_size, ops_backend, name, rep_decoder_pos_embed)
        self.reset_parameters()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_images(images)
        return F.normalize(self.project(self.decode_rep(self.encode(images))), dim=-1)

    @classmethod
    def from_online(cls, online: OnlineNetwork) -> TargetNetwork:
        """A frozen target with every shared weight copied from ``online``, on its device and dtype."""
        target = cls(online.config, online.img_size, online.ops_backend, online.model_name, online.rep_pos_init)
        target.to(device=online.cls_token.device, dtype=online.cls_token.dtype)
        source = online.state_dict()
        target.load_state_dict({k: source[k] for k in target.state_dict()}, strict=True)
        target.requires_grad_(False)
        return target

    def ema_pairs(self, online: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(target params, online params) of every parameter name both hold, in the target's order."""
        online_params = dict(online.named_parameters())
        target_list, online_list = [], []
        for name, param in self.named_parameters():
            other = online_params.get(name)
            if other is None:
                continue
            if other.shape != param.shape:
                raise ValueError(f"ema_pairs: {name} is {list(param.shape)} in the target but "
                                 f"{list(other.shape)} in the online network")
            target_list.append(param)
            online_list.append(other)
        if not target_list:
            raise ValueError("ema_pairs: the online network shares no parameter names with the target")
        return target_list, online_list


@dataclass
class OnlineOutput:
    loss: torch.Tensor
    loss_rec_all: torch.Tensor
    loss_rec_sfr: torch.Tensor
    loss_cl: torch.Tensor | None
    features: torch.Tensor
    pred: torch.Tensor


_CL_LOSSES = ("simsiam", "byol")


class OnlineNetwork(FSFMTrunk):
    """Masked view -> pixel reconstruction of hidden patches and a predicted projection."""

    def __init__(self, config: ModelConfig, img_size: int = 224, norm_pix_loss: bool = True,
                 weight_sfr: float = 0.007, weight_cl: float = 0.1, cl_loss: str = "simsiam",
                 ops_backend: str = "auto", name: str | None = None, rep_decoder_pos_embed: str = "zeros"):
        super().__init__(config, img_size, ops_backend, name, rep_decoder_pos_embed)
        if cl_loss not in _CL_LOSSES:
            raise ValueError(f"cl_loss must be one of {_CL_LOSSES}, got {cl_loss!r}")
        c = config
        self.norm_pix_loss = norm_pix_loss
        self.weight_sfr = weight_sfr
        self.weight_cl = weight_cl
        self.cl_loss = cl_loss

        self.predictor = ProjectionMLP(c.proj_dim, c.proj_hidden, c.proj_dim)

        self.decoder_embed = nn.Linear(c.rep_dim, c.decoder_dim)
        self.decoder_pos_embed = _fixed_pos_embed(c.decoder_dim, self.grid)
        self.decoder_blocks = _blocks(c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio)
        self.decoder_norm = _norm_layer(c.decoder_dim)
        self.decoder_pred = nn.Linear(c.decoder_dim, c.patch_size ** 2 * 3)
        self.reset_parameters()

    def decode_pixels(self, latent: torch.Tensor, ids_restore: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """Pixel decoder -> [B, L, p*p*3] (cls dropped)."""
        if self.ops_backend == "torch":
            # The reference order: fill hidden places with the rep decoder's mask token in
            # encoder width, then embed all L+1 tokens.
            x = ops.restore_masked(latent, ids_restore, self.mask_token, None, backend="torch",
                                   validate=validate)
            x = self.decoder_embed(x) + self.decoder_pos_embed
        else:
            # decoder_embed acts on each token alone, so embedding the K+1 real tokens and the
            # mask token once, then restoring, is the same function with a 4x smaller matmul, and
            # the restore adds decoder_pos_embed in the same pass.
            fill = self.decoder_embed(self.mask_token)
            x = ops.restore_masked(self.decoder_embed(latent), ids_restore, fill,
                                   self.decoder_pos_embed[0], backend=self.ops_backend, validate=validate)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def _check_mask(self, name: str, mask: Any, batch: int) -> None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(mask).__name__}")
        if tuple(mask.shape) != (batch, self.num_patches):
            raise ValueError(f"{name} must be [{batch}, {self.num_patches}] for img_size={self.img_size}, "
                             f"patch {self.patch_size}, got {list(mask.shape)}")

    def forward(self, images: torch.Tensor, img_mask: torch.Tensor, fr_mask: torch.Tensor,
                target_features: torch.Tensor | None = None,
                ids: tuple[torch.Tensor, torch.Tensor] | None = None, validate: bool = True) -> OnlineOutput:
        """ids: ops.mask_to_indices(img_mask, K) when already at hand; without them K is read from
        the mask on the host. validate=False: the masks and indices come from the training step
        itself, so the ops skip the checks of their values (each a host sync on a GPU)."""
        self.check_images(images)
        batch = images.shape[0]
        self._check_mask("img_mask", img_mask, batch)
        self._check_mask("fr_mask", fr_mask, batch)
        if target_features is not None and tuple(target_features.shape) != (batch, self.config.proj_dim):
            raise ValueError(f"target_features must be [{batch}, {self.config.proj_dim}], "
                             f"got {list(target_features.shape)}")

        # One implementation for every backend: it only sorts the mask.
        ids_keep, ids_restore = ids if ids is not None else ops.mask_to_indices(img_mask, validate=validate)
        latent = self.encode(images, ids_keep, validate)
        rep = self.decode_rep(latent, ids_restore, validate)
        features = F.normalize(self.predictor(self.project(rep)), dim=-1)
        pred = self.decode_pixels(latent, ids_restore, validate)

        with_cl = target_features is not None
        losses = ops.fsfm_loss(
            pred, images, img_mask, fr_mask, features if with_cl else None, target_features,
            patch_size=self.patch_size, norm_pix_loss=self.norm_pix_loss, weight_sfr=self.weight_sfr,
            weight_cl=self.weight_cl, cl_loss=self.cl_loss, backend=self.ops_backend, validate=validate,
        )
        return OnlineOutput(
            loss=losses.total, loss_rec_all=losses.rec_all, loss_rec_sfr=losses.rec_sfr,
            loss_cl=losses.cl if with_cl else None, features=features, pred=pred,
        )


def create_online(name: str, img_size: int = 224, norm_pix_loss: bool = True, **kwargs: Any) -> OnlineNetwork:
    return OnlineNetwork(get_config(name), img_size, norm_pix_loss=norm_pix_loss, name=name, **kwargs)


def create_target(name: str, img_size: int = 224, **kwargs: Any) -> TargetNetwork:
    return TargetNetwork(get_config(name), img_size, name=name, **kwargs)


def load_reference_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a reference ``checkpoint-*.pth`` into ``model`` strictly; returns the whole checkpoint dict."""
    obj = safe_load(path)
    if "model" not in obj:
        raise ValueError(f"checkpoint {path} has no 'model' state_dict (top-level keys: {list(obj)})")
    state = obj["model"]
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint {path}: 'model' is a {type(state).__name__}, expected a state_dict")
    problems = state_mismatch(model.state_dict(), state)
    if problems:
        what = getattr(model, "model_name", None) or type(model).__name__
        raise ValueError("; ".join([f"checkpoint {path} does not match {type(model).__name__} ({what})"] + problems))
    model.load_state_dict(state, strict=True)
    return obj
