"""Static facts about every built-in encoder: architecture, preprocessing, tokens, weights.

Pure data (no torch): `repa validate` and `repa plugins encoder` read it without building
anything. Facts follow the official code (sihyun-yu/REPA @ 67f7145): `utils.load_encoders` and
`train.preprocess_raw_image`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from repa.weights import hf_cached_file, hf_repo_dir, torch_hub_checkpoints, user_cache

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    family: str  # dinov2 | mocov3 | mae | ijepa | dinov1 | clip | digits
    embed_dim: int
    patch_size: int
    arch: dict = field(default_factory=dict)  # timm VisionTransformer kwargs (width, depth, heads, ...)
    # "resize": bicubic to 224/256 of the image side (DINOv2, CLIP, I-JEPA); "native": no resize.
    resize: str = "native"
    normalize_first: bool = True  # REPA normalises before resizing except for CLIP
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    prefix_tokens: int = 1  # tokens dropped from the output (CLS, registers)
    default_file: str | None = None  # the seed's ./ckpts path for local-file encoders
    url: str | None = None  # where the official weights are published
    hub_file: str | None = None  # torch.hub cache file name (DINOv2)
    hf_repo: str | None = None  # Hugging Face repo in timm/open_clip format
    hf_files: tuple = ("model.safetensors",)
    user_cache_file: str | None = None  # also accepted: a file under ~/.cache another tool downloads to
    source: str = "local file"

    @property
    def global_token(self) -> str | None:
        """Where the image's global token is: "class" (token 0, before the patches), "mean" (the digits
        convnet's head reads the mean token), None (I-JEPA has no class token)."""
        if self.family == "digits":
            return "mean"
        return "class" if self.prefix_tokens >= 1 else None

    @property
    def attention_blocks(self) -> int | None:
        """Blocks whose attention logits the encoder gives: the timm ViTs' blocks; the digits convnet
        has no attention and gives its tokens' affinities as one block, one head instead; None: CLIP."""
        if self.family == "digits":
            return 1
        return None if self.family == "clip" else self.arch.get("depth")

    def input_size(self, resolution: int) -> int:
        return resolution * 224 // 256 if self.resize == "resize" else resolution

    def tokens_for(self, resolution: int) -> int:
        side = self.input_size(resolution)
        if (self.resize == "resize" and resolution * 224 % 256) or side % self.patch_size:
            raise ValueError(
                f"{resolution} px gives a {side} px encoder input, not a multiple of its patch size "
                f"{self.patch_size}; use a resolution that is a multiple of "
                f"{256 * self.patch_size // 224 if self.resize == 'resize' else self.patch_size}"
            )
        return (side // self.patch_size) ** 2


def candidate_files(spec: EncoderSpec, weights: str | None) -> list[Path]:
    """Every place the weights may be, in order of preference."""
    if weights:
        return [Path(weights).expanduser()]
    places = []
    if spec.hub_file:
        places.append(torch_hub_checkpoints() / spec.hub_file)
    if spec.hf_repo:
        cached = hf_cached_file(spec.hf_repo, spec.hf_files)
        places.append(cached or hf_repo_dir(spec.hf_repo) / "snapshots" / "<rev>" / spec.hf_files[0])
    if spec.user_cache_file:
        places.append(user_cache() / spec.user_cache_file)
    if spec.default_file:  # the seed's ./ckpts paths, relative to the directory repa runs in
        places.append(Path.cwd() / spec.default_file.removeprefix("./"))
    return places


def present_file(spec: EncoderSpec, weights: str | None) -> Path | None:
    return next((p for p in candidate_files(spec, weights) if "<rev>" not in str(p) and p.is_file()), None)


# ============================================================================
# The table
# ============================================================================

_DINOV2 = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}
_MOCOV3 = {"s": (384, 12, 12), "b": (768, 12, 12), "l": (1024, 24, 16)}  # MoCo v3 ViT-S has 12 heads
_TIMM_DINOV2 = {"s": "small", "b": "base", "l": "large", "g": "giant"}
_MOCO_URLS = {
    "s": "https://dl.fbaipublicfiles.com/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
    "b": "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
    "l": "the MoCo v3 ViT-L checkpoint released by RCG (https://github.com/LTH14/rcg)",
}


def _dinov2(size: str, registers: bool) -> EncoderSpec:
    width, depth, heads = _DINOV2[size]
    arch = dict(embed_dim=width, depth=depth, num_heads=heads, init_values=1e-5)
    if size == "g":
        arch.update(mlp_ratio=2.66667 * 2, mlp_layer="swiglu_packed", act_layer="silu")
    if registers:
        arch.update(reg_tokens=4, no_embed_class=True)
    tag = f"dinov2_vit{size}14{'_reg4' if registers else ''}"
    return EncoderSpec(
        name=f"dinov2{'reg' if registers else ''}-vit-{size}", family="dinov2", embed_dim=width, patch_size=14,
        arch=arch, resize="resize", prefix_tokens=5 if registers else 1,
        url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{size}14/{tag}_pretrain.pth",
        hub_file=f"{tag}_pretrain.pth",
        hf_repo=f"timm/vit_{_TIMM_DINOV2[size]}_patch14_{'reg4_' if registers else ''}dinov2.lvd142m",
        source="torch.hub (facebookresearch/dinov2)",
    )


def _mocov3(size: str) -> EncoderSpec:
    width, depth, heads = _MOCOV3[size]
    return EncoderSpec(
        name=f"mocov3-vit-{size}", family="mocov3", embed_dim=width, patch_size=16,
        arch=dict(embed_dim=width, depth=depth, num_heads=heads),
        default_file=f"./ckpts/mocov3_vit{size}.pth", url=_MOCO_URLS[size],
    )


SPECS: dict[str, EncoderSpec] = {
    **{s.name: s for s in (_dinov2(size, reg) for reg in (False, True) for size in "sblg")},
    **{s.name: s for s in (_mocov3(size) for size in "sbl")},
    "dinov1-vit-b": EncoderSpec(
        name="dinov1-vit-b", family="dinov1", embed_dim=768, patch_size=16,
        arch=dict(embed_dim=768, depth=12, num_heads=12), default_file="./ckpts/dinov1_vitb.pth",
        url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    ),
    "mae-vit-l": EncoderSpec(
        name="mae-vit-l", family="mae", embed_dim=1024, patch_size=16,
        arch=dict(embed_dim=1024, depth=24, num_heads=16), default_file="./ckpts/mae_vitl.pth",
        url="https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_large.pth",
    ),
    "jepa-vit-h": EncoderSpec(
        name="jepa-vit-h", family="ijepa", embed_dim=1280, patch_size=14,
        arch=dict(embed_dim=1280, depth=32, num_heads=16, class_token=False, global_pool="avg", fc_norm=False),
        resize="resize", prefix_tokens=0, default_file="./ckpts/ijepa_vith.pth",
        url="https://dl.fbaipublicfiles.com/ijepa/IN1K-vit.h.14-300e.pth.tar",
    ),
    "clip-vit-L": EncoderSpec(
        name="clip-vit-L", family="clip", embed_dim=1024, patch_size=14, arch=dict(depth=24),
        resize="resize", normalize_first=False, mean=CLIP_MEAN, std=CLIP_STD,
        hf_repo="timm/vit_large_patch14_clip_224.openai",
        hf_files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
        user_cache_file="clip/ViT-L-14.pt",  # OpenAI's TorchScript release, where the official code's clip.load puts it
        url="https://huggingface.co/timm/vit_large_patch14_clip_224.openai", source="open_clip (OpenAI weights)",
    ),
}

SPECS["digits-convnet"] = EncoderSpec(
    name="digits-convnet", family="digits", embed_dim=128, patch_size=4, mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5), prefix_tokens=0, source="trained by repa on the embedded digits (first use, cached)",
)
