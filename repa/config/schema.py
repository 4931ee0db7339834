"""The experiment file's sections and keys (the contract in DESIGN.md). Defaults are the official
train.py's (sihyun-yu/REPA @ 67f7145).

Component-valued keys are `Annotated[Component, Kind(kind, default)]`: the loader looks their
`kind` up in the registry and validates the remaining keys with that component's own params
model before this static schema sees them.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from repa.components.term import AlignmentParams
from repa.config.component import Component, Kind


# The widest power-function EMA profile: exponent 0, a plain running mean (Karras et al. 2024, Eq. 123).
POWER_EMA_MAX_STD = math.sqrt(1 / 12)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ExperimentSection(Section):
    name: str = Field("experiment", min_length=1, description="run folder: <output_dir>/<name>")
    output_dir: str = Field("exps", description="parent folder of all runs")
    seed: int = Field(0, ge=0, description="global seed: data order, t, noise, label dropout")

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, name):
        """The run folder must stay inside output_dir: one path component, printable."""
        if name in (".", "..") or any(sep in name for sep in ("/", "\\")):
            raise ValueError("must be one folder name (no '/', '\\', '.' or '..'); put parent folders in "
                             "experiment.output_dir")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            raise ValueError("must not contain control characters (newline, tab, ...)")
        return name


AlignmentEntry = AlignmentParams  # an [[alignment]] entry: the params of the built-in "alignment" term


class TrainSection(Section):
    global_batch_size: int = Field(256, ge=1, description="summed over processes and accumulation steps")
    max_steps: int = Field(400_000, ge=1)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description='"constant" (REPA); "cosine": from optim.lr down to 0 at max_steps')
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 to optim.lr over these steps")
    grad_accum_steps: int = Field(1, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    allow_tf32: bool = True
    ema_decay: float = Field(0.9999, ge=0, le=1)
    posthoc_ema: list[float] = Field(
        default_factory=list, description="post-hoc EMA (Karras et al. 2024): relative widths of the power-function "
        "profiles tracked beside the classic EMA, e.g. [0.05, 0.10] (edm2's); `repa ema` reconstructs any width")
    posthoc_ema_every: int | None = Field(
        None, ge=1, description="steps between post-hoc EMA snapshots (RUN/phema/, never pruned); default: "
        "checkpoint_every")
    label_dropout: float = Field(0.1, ge=0, lt=1, description="probability of the null label (CFG)")
    legacy_label_dropout: bool = Field(
        False, description="drop labels twice as the official train.py does (for reproducing old runs)"
    )
    alignment_reduction: Literal["mean", "sum"] = Field(
        "mean", description='"mean": sum over entries / number of entries (official); "sum": plain sum'
    )
    checkpoint_every: int = Field(50_000, ge=1)
    keep_checkpoints: int = Field(3, ge=1, description="keep the last K checkpoints")
    keep_every: int | None = Field(
        None, ge=1, description="checkpoints at multiples of this step are kept as well, whatever keep_checkpoints "
        "says (the points of a paper's curve, e.g. every 50K)")
    sample_every: int = Field(10_000, ge=1)
    sample_images: int = Field(64, ge=1, description="images in each sample grid")
    log_every: int = Field(100, ge=1)
    grad_checkpointing: bool = False
    compile: bool | Literal["blocks", "model"] = Field(
        False, description='torch.compile: true or "blocks" compiles each backbone block in place (regional: one '
        'compilation serves every block); "model" the whole network')
    max_nonfinite_steps: int = Field(5, ge=1, description="stop after this many non-finite losses in a row")
    num_workers: int = Field(4, ge=0, description="data loader worker processes (on a CPU, at most the spare cores)")
    threads: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description='CPU threads; "auto": the cores other processes leave free, looked at again during '
        'the run (REPA_THREADS or OMP_NUM_THREADS also choose)')
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description='"ddp": replicate the model; "fsdp": shard it per block (large backbones; no fp16)'
    )


    @field_validator("posthoc_ema")
    @classmethod
    def _power_function_widths(cls, stds):
        bad = [s for s in stds if not 0 < s < POWER_EMA_MAX_STD]
        if bad:
            raise ValueError(f"every width must be between 0 and {POWER_EMA_MAX_STD:.4f} (exclusive; edm2 tracks 0.05 "
                             "and 0.10)")
        if len({f"{s:.6g}" for s in stds}) != len(stds):
            raise ValueError("lists a width twice (to 6 significant digits, which name its snapshots)")
        return stds

    @model_validator(mode="after")
    def _posthoc_ema_replicated(self):
        if self.posthoc_ema and self.distributed == "fsdp":
            raise ValueError('posthoc_ema is tracked on replicated weights: use train.distributed = "ddp" (or '
                             "drop train.posthoc_ema)")
        every = self.posthoc_ema_every
        if self.posthoc_ema and every and self.checkpoint_every % every:
            raise ValueError(f"posthoc_ema_every = {every} must divide checkpoint_every = {self.checkpoint_every} "
                             "(each checkpoint step then has a snapshot to evaluate)")
        return self


class SampleSection(Section):
    sampler: Annotated[Component, Kind("sampler", default="euler-maruyama")]
    guidance: Annotated[Component, Kind("guidance", default="cfg")]
    steps: int = Field(250, ge=1)
    cfg_scale: float = Field(1.0, ge=0, description="1 = no guidance")
    guidance_interval: tuple[float, float] = Field((0.0, 1.0), description="[low, high] on t")
    state_dtype: Literal["float64", "model"] = Field("float64", description="dtype of the sampler state")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="the network's autocast while sampling (fp16 needs a GPU; bf16 on a CPU)")
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        64, description='samples per process per forward; "auto": as many as 80% of the free GPU memory holds '
        '(measured on a probe batch; 64 on a CPU)')
    compile: bool = Field(False, description="torch.compile the backbone's blocks for sampling (regional)")
    labels: Literal["random", "balanced"] = Field(
        "random", description='class labels of sample i: "random" (uniform at random per sample, as the official '
        'generate.py), "balanced" (i mod classes: the same count per class, as RAE and others report)')
    allow_tf32: bool = Field(True, description="TF32 matmuls and convolutions while sampling on a GPU (the official "
                             "generate.py's --tf32, on by default)")

    @model_validator(mode="before")
    @classmethod
    def _renamed_label_key(cls, data):
        """`label_sampling` ("uniform" | "balanced") before `labels`: run folders written by earlier
        releases still load, with the same run id."""
        if isinstance(data, dict) and "label_sampling" in data:
            data = dict(data)
            old = data.pop("label_sampling")
            data.setdefault("labels", "random" if old == "uniform" else old)  # a `labels` given as well wins
        return data

    def guidance_settings(self) -> tuple[float, tuple[float, float]]:
        """(scale, interval) of the guidance: its own params' where it sets them, else cfg_scale and
        guidance_interval here (the keys experiment files have always used)."""
        params = self.guidance.params
        scale, interval = getattr(params, "scale", None), getattr(params, "interval", None)
        return (self.cfg_scale if scale is None else scale,
                tuple(self.guidance_interval if interval is None else interval))

    @field_validator("guidance_interval")
    @classmethod
    def _interval_ordered(cls, interval):
        low, high = interval
        if not 0 <= low <= high <= 1:
            raise ValueError(f"must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
        return interval


class EvalSection(Section):
    num_samples: int = Field(50_000, ge=1)
    reference: str | None = Field(None, description="reference batch .npz (ADM format) or image folder")
    metrics: list[Annotated[Component, Kind("metric")]] = Field(default_factory=list)
    every: int | None = Field(None, ge=1, description="evaluate the EMA model every N training steps (a curve in "
                              "metrics.jsonl and the tracker; class-balanced samples)")
    every_num_samples: int | None = Field(None, ge=1, description="samples per evaluation during training; default: "
                                          "num_samples")

    @model_validator(mode="after")
    def _metrics_to_evaluate_with(self):
        if self.every is not None and not self.metrics:
            raise ValueError('every needs eval.metrics (e.g. metrics = ["fid"], or ["digits-fd"] on the digits)')
        return self


class ExperimentConfig(Section):
    experiment: ExperimentSection = ExperimentSection()
    data: Annotated[Component, Kind("dataset")]
    autoencoder: Annotated[Component, Kind("autoencoder", default="sd-vae")]
    backbone: Annotated[Component, Kind("backbone")]
    conditioning: Annotated[Component, Kind("conditioning", default="class")]
    path: Annotated[Component, Kind("path", default="linear")]
    prediction: Annotated[Component, Kind("prediction", default="v")]
    weighting: Annotated[Component, Kind("weighting", default="uniform")]
    alignment: list[AlignmentEntry] = Field(default_factory=list)
    attention: list[Annotated[Component, Kind("attention_loss")]] = Field(
        default_factory=list, description="attention alignments (HASTE's holistic alignment), from plugins")
    joint: list[Annotated[Component, Kind("joint")]] = Field(
        default_factory=list, description="quantities denoised jointly with the image (REG's class token)")
    term: list[Annotated[Component, Kind("term")]] = Field(
        default_factory=list, description="training terms from the registry (`repa plugins term`), any kind")
    optim: Annotated[Component, Kind("optimizer", default="adamw")]
    train: TrainSection = TrainSection()
    sample: SampleSection
    eval: EvalSection = EvalSection()
    tracker: Annotated[Component, Kind("tracker", default="jsonl")]
