"""PAM's Semantic Perceiver: turns SAM 2 mask-decoder features into LLM-ready region tokens.

Inputs (per object): the decoder's image output `mid_image_embed` [B, 256, 64, 64] and the two mid mask
tokens `mid_mask_tokens` [B, 2, 256]. Outputs: 16 semantic tokens [B, 16, 256] and the decoder image
features re-packed into image tokens: [B, 1024, 1024] at scale 1/2 (image mode and video frame 0) or
[B, 256, 1024] at scale 1/4 (other video frames, after `proj` 4096 -> 1024).

Built from the official `sam2` blocks (TwoWayAttentionBlock, Attention, PositionEmbeddingRandom), which
compute exactly what PAM's perceiver layers compute (PAM's own Attention only adds a token-downsampling
option that the perceiver never uses). Parameter names match the official `model.vision_resampler.*`.
"""
from __future__ import annotations

import torch
from sam2.modeling.position_encoding import PositionEmbeddingRandom
from sam2.modeling.sam.transformer import Attention, TwoWayAttentionBlock
from torch import Tensor, nn

NUM_SEM_TOKENS = 16
EMBED_DIM = 256
NUM_HEADS = 8
MLP_DIM = 2048
DEPTH = 2
CROSS_ATTENTION_DOWNSAMPLE = 2

IMAGE_SCALE = 0.5  # image mode and the first frame of a video
VIDEO_FRAME_SCALE = 0.25  # every other video frame


def pam_pixel_shuffle(x: Tensor, scale: float) -> Tensor:
    """PAM's pixel shuffle, [B, C, H, W] -> [B, C/scale^2, H*scale, W*scale].

    This is not torch's pixel_(un)shuffle: PAM views the (token-major) memory as [B, W, H*s, C/s],
    swaps the first two spatial axes, and views again. Reproduced view for view, because the resulting
    token/channel order is what the projector was trained on.
    """
    b, c, h, w = x.shape
    hs, ws = int(h * scale), int(w * scale)
    x = x.view(b, w, hs, int(c / scale))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(b, hs, ws, int(c / (scale * scale)))
    return x.permute(0, 3, 1, 2).contiguous()


class SemanticPerceiver(nn.Module):
    """Two-way transformer over [2 mid mask tokens, 16 learned semantic tokens] and the image features."""

    def __init__(self, embed_dim: int = EMBED_DIM, num_sem_tokens: int = NUM_SEM_TOKENS,
                 depth: int = DEPTH, num_heads: int = NUM_HEADS, mlp_dim: int = MLP_DIM) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.sem_tokens = nn.Embedding(num_sem_tokens, embed_dim)
        # flattens the 1/4-scale tokens (16x the channels) back to 4x the channels, as at scale 1/2
        self.proj = nn.Linear(embed_dim * 16, embed_dim * 4)
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embed_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=nn.ReLU,
                attention_downsample_rate=CROSS_ATTENTION_DOWNSAMPLE,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embed_dim, num_heads, downsample_rate=CROSS_ATTENTION_DOWNSAMPLE
        )
        self.norm_final_attn = nn.LayerNorm(embed_dim)

    @classmethod
    def from_checkpoint(cls, ckpt, *, device="cpu", dtype=torch.float32) -> "SemanticPerceiver":
        """The perceiver of a PamCheckpoint (strict: missing/unexpected/misshapen tensors are named)."""
        from pam_ros.model.checkpoint import load_module_weights

        with torch.device("meta"):
            model = cls()
        load_module_weights(model, ckpt.tensors["perceiver"], "perceiver", device=device, dtype=dtype)
        # the positional encoding is computed from a float32 grid: keep its frequencies in float32
        # (in bf16/fp16 runs the result is cast to the working dtype afterwards)
        model.pe_layer.float()
        return model.eval()

    def _image_pe(self, h: int, w: int, like: Tensor) -> Tensor:
        pe = self.pe_layer((h, w)).unsqueeze(0)  # [1, C, H, W]
        return pe.flatten(2).permute(0, 2, 1).to(dtype=like.dtype, device=like.device)

    def forward(self, image_embed: Tensor, mid_mask_tokens: Tensor,
                scale: float = IMAGE_SCALE) -> tuple[Tensor, Tensor]:
        """Returns (sem_tokens [B, 16, C], image_tokens [B, N, 4C]); N = 1024 at 1/2, 256 at 1/4."""
        if scale not in (IMAGE_SCALE, VIDEO_FRAME_SCALE):
            raise ValueError(f"perceiver scale must be 1/2 or 1/4, got {scale}")
        bs, c, h, w = image_embed.shape
        keys = image_embed.flatten(2).permute(0, 2, 1)  # [B, HW, C]
        n_prompt = mid_mask_tokens.shape[1]
        learned = self.sem_tokens.weight.unsqueeze(0).expand(bs, -1, -1)
        queries = torch.cat((mid_mask_tokens.to(keys.dtype), learned), dim=1)
        # PAM uses the initial queries themselves as their positional embedding
        query_pe = queries
        image_pe = self._image_pe(h, w, keys)
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=query_pe, key_pe=image_pe)
        attn_out = self.final_attn_token_to_image(q=queries + query_pe, k=keys + image_pe, v=keys)
        queries = self.norm_final_attn(queries + attn_out)

        # PAM reinterprets the token-major keys [B, HW, C] as [B, C, H, W] with a reshape (not a
        # permute); the image-token layout the LLM saw in training depends on it.
        grid = keys.reshape(bs, -1, h, w)
        tokens = pam_pixel_shuffle(grid, scale).flatten(2).permute(0, 2, 1)
        if scale == VIDEO_FRAME_SCALE:
            tokens = self.proj(tokens)
        return queries[:, n_prompt:, :], tokens
