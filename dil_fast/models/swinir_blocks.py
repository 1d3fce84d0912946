"""SwinIR's building blocks (the window attention, the Swin Transformer block and layer, the
residual group and the patch embedding), written from the paper and the public architecture; the
network and its checkpoint layout are :mod:`dil_fast.models.swinir`.

Window partition: ``[B, H, W, C]`` -> windows of ``window x window`` tokens in raster order;
shifted blocks roll the feature map by ``-shift`` first and mask attention between tokens that came
from different regions (``MASK_VALUE``); every head adds a learned bias indexed by the relative
position of the two tokens inside the window.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

UPSAMPLERS = ("", "pixelshuffle", "pixelshuffledirect", "nearest+conv")
RESI_CONNECTIONS = ("1conv", "3conv")
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # the DIV2K mean the official model subtracts from RGB input
RECONSTRUCTION_FEATURES = 64  # width of the official reconstruction convs (``num_feat``)
MASK_VALUE = -100.0  # the official additive mask between tokens of different shifted regions


def pair_size(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """Non-overlapping ``window x window`` windows in raster order, tokens row-major inside each.
    ``[B, H, W, C] -> [B * H/window * W/window, window*window, C]``."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, window*window, C] -> [B, H, W, C]``."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.reshape(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """Row of the bias table for each (query i, key j) token pair of a window: with (y, x) the
    in-window coordinates, ``(y_i - y_j + window - 1) * (2*window - 1) + (x_i - x_j + window - 1)``.
    ``[window², window²]`` int64, values in ``[0, (2*window - 1)²)``."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(
    h: int, w: int, window: int, shift: int, *, device=None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Additive attention mask of the shifted windows of an ``h x w`` map (``h, w`` multiples of
    ``window``). After the cyclic shift by ``-shift``, rows ``[0, h-window)``, ``[h-window, h-shift)``
    and ``[h-shift, h)`` (same for columns) are the regions; two tokens of one window in different
    regions were not neighbours before the shift and get ``MASK_VALUE`` (-100), others 0.
    ``[nW, window², window²]``, windows in :func:`window_partition` order."""
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    region_row = (rows >= h - window).long() + (rows >= h - shift).long()
    region_col = (cols >= w - window).long() + (cols >= w - shift).long()
    region = (region_row[:, None] * 3 + region_col[None, :])[None, :, :, None]
    labels = window_partition(region, window)[..., 0]
    differ = labels[:, None, :] != labels[:, :, None]
    return torch.zeros(differ.shape, device=device, dtype=dtype).masked_fill(differ, MASK_VALUE)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    # no random op when the rate is 0, so vmap's default randomness="error" never trips on it
    return F.dropout(x, p, training) if p > 0 and training else x


class DropPath(nn.Module):
    """Stochastic depth: in training, each sample's residual branch is zeroed with probability ``p``
    and kept ones are scaled by ``1 / (1 - p)``; identity in eval or for ``p = 0``. ``[B, L, D]``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0 or not self.training:
            return x
        keep = 1.0 - self.p
        survivors = torch.rand_like(x[:, :1, :1]) < keep
        return x * survivors.to(x.dtype) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``, ``[..., D] -> [..., D]`` through ``hidden`` features."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = float(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = dropout(F.gelu(self.fc1(x)), self.drop, self.training)
        return dropout(self.fc2(x), self.drop, self.training)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias.

    For the ``n = window²`` tokens of a window, per head h (``d = dim / heads``)::

        A_h = softmax(q_h k_hᵀ · scale + B_h + M),   out = proj(concat_h A_h v_h)
        B_h[i, j] = relative_position_bias_table[relative_position_index[i, j], h]

    ``scale = qk_scale or d^-0.5``; ``M`` is the shifted-window mask (0 / -100) or absent.
    Parameters: ``relative_position_bias_table [(2*window-1)², heads]``, ``qkv``, ``proj``;
    buffer ``relative_position_index [n, n]``.
    """

    def __init__(
        self,
        dim: int,
        window: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = float(attn_drop)
        self.proj_drop = float(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """``B``: ``[heads, window², window²]``."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B * nW, n, dim]`` (windows of B images, window-major per image); ``mask``:
        ``[nW, n, n]`` or None. Returns ``[B * nW, n, dim]``."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(bw // nw, nw, self.num_heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.reshape(bw, self.num_heads, n, n)
        attn = dropout(attn.softmax(dim=-1), self.attn_drop, self.training)
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return dropout(self.proj(out), self.proj_drop, self.training)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, num_heads={self.num_heads}"


class SwinTransformerBlock(nn.Module):
    """One Swin Transformer block on tokens ``[B, H*W, D]`` of an ``H x W`` map::

        y = x + DropPath(unshift(merge(WindowAttention(partition(shift(norm1(x)))))))
        out = y + DropPath(mlp(norm2(y)))

    ``shift`` rolls the map by ``(-shift_size, -shift_size)`` (``unshift`` rolls back) so that odd
    blocks see windows straddling the previous block's window borders; the rolled-in borders get the
    mask of :func:`shifted_window_mask`. When the map is not larger than the window (``min(H, W) <=
    window_size`` at ``input_resolution``) the window becomes the whole short side and there is no
    shift, as officially. The mask for ``input_resolution`` is the ``attn_mask`` buffer
    ``[nW, window², window²]`` (for ``input_resolution`` rounded up to a multiple of the window, where
    the official model fails to build); other sizes compute theirs on the input's device.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window_size:
            window_size, shift_size = min(self.input_resolution), 0
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        # the official model cannot be built when img_size is no multiple of the window; the map the
        # forward sees there is the padded one, so the buffer is built for that
        self.mask_resolution = tuple(-(-r // window_size) * window_size for r in self.input_resolution)
        mask = shifted_window_mask(*self.mask_resolution, window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", mask)

    def window_mask(self, x_size: tuple[int, int], like: torch.Tensor) -> torch.Tensor | None:
        """The mask for an ``x_size`` map: None (no shift), the buffer, or a fresh one."""
        if not self.shift_size:
            return None
        if tuple(x_size) == self.mask_resolution:
            return self.attn_mask
        return shifted_window_mask(*x_size, self.window_size, self.shift_size, device=like.device, dtype=like.dtype)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        """``x``: ``[B, H*W, D]``, ``x_size = (H, W)``, both multiples of the window. Same shape out."""
        h, w = x_size
        b, _, c = x.shape
        s = self.shift_size
        y = self.norm1(x).reshape(b, h, w, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        windows = self.attn(window_partition(y, self.window_size), self.window_mask(x_size, x))
        y = window_reverse(windows, self.window_size, h, w)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, input_resolution={self.input_resolution}, window_size={self.window_size}, "
            f"shift_size={self.shift_size}"
        )


class SwinTransformerLayer(nn.Module):
    """``depth`` blocks, alternately unshifted and shifted by ``window_size // 2`` (``blocks.{j}``).
    ``[B, H*W, D] -> [B, H*W, D]``."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        norm_layer: Callable[[int], nn.Module],
        use_checkpoint: bool,
    ):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                SwinTransformerBlock(
                    dim,
                    input_resolution,
                    num_heads,
                    window_size,
                    shift_size=0 if j % 2 == 0 else window_size // 2,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop,
                    attn_drop=attn_drop,
                    drop_path=drop_path[j],
                    norm_layer=norm_layer,
                )
                for j in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        recompute = self.use_checkpoint and torch.is_grad_enabled()
        for block in self.blocks:
            x = self._checkpointed(block, x, x_size) if recompute else block(x, x_size)
        return x

    @staticmethod
    def _checkpointed(block: nn.Module, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        """``block(x)`` recomputed in the backward. The block's tensors are explicit inputs so that the
        recomputation uses the ones in force now (``functional_call`` swaps them only for the forward)."""
        names, tensors = zip(*block.named_parameters())

        def run(tokens, *weights):
            return functional_call(block, dict(zip(names, weights)), (tokens, x_size))

        return checkpoint(run, x, *tensors, use_reentrant=False)


def residual_conv(dim: int, kind: str) -> nn.Module:
    """The conv before a residual: ``1conv`` a 3x3 conv; ``3conv`` 3x3 (D -> D/4), LeakyReLU(0.2),
    1x1, LeakyReLU(0.2), 3x3 (D/4 -> D) (indices 0, 2, 4 hold the weights)."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    return nn.Sequential(
        nn.Conv2d(dim, dim // 4, 3, 1, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(dim // 4, dim // 4, 1, 1, 0),
        nn.LeakyReLU(0.2),
        nn.Conv2d(dim // 4, dim, 3, 1, 1),
    )


def to_image(tokens: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    """``[B, H*W, D] -> [B, D, H, W]``."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, x_size[0], x_size[1])


def to_tokens(image: torch.Tensor) -> torch.Tensor:
    """``[B, D, H, W] -> [B, H*W, D]``."""
    return image.flatten(2).transpose(1, 2)


class ResidualSwinTransformerBlock(nn.Module):
    """RSTB: ``x + tokens(conv(image(residual_group(x))))`` on ``[B, H*W, D]``."""

    def __init__(self, dim: int, resi_connection: str, **layer_options):
        super().__init__()
        self.residual_group = SwinTransformerLayer(dim, **layer_options)
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        return x + to_tokens(self.conv(to_image(self.residual_group(x, x_size), x_size)))


class PatchEmbed(nn.Module):
    """Image to tokens (patch size 1, as every official model): ``[B, D, H, W] -> [B, H*W, D]``,
    then ``norm`` when ``patch_norm``."""

    def __init__(self, dim: int, norm_layer: Callable[[int], nn.Module] | None):
        super().__init__()
        self.norm = norm_layer(dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_tokens(x)
        return self.norm(x) if self.norm is not None else x
