"""open_clip adapter: load a model for a spec; embed pixels and prompts with their
pre-projection features.

phi (image) and psi (text) are the inputs of the towers' last linear projection. For a
parameter projection (ViT `visual.proj`, CLIP `text_projection`) the tower is run with the
projection removed and the product done here, so `phi @ P` is exactly what open_clip
computes. For an `nn.Linear` projection (timm `head.proj`, HF `proj`) a forward pre-hook
captures its input. Towers without a linear last layer (ModifiedResNet attention pooling,
MLP heads) give embeddings only: phi is None for them.

Convention (as stored by open_clip, NOT the transposed D x d of science.md):
P is (d, D) and Q is (d_t, D), so that g = phi @ P (+ P_bias) and h = psi @ Q (+ Q_bias).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

from alkit.errors import ConfigError, ExternalServiceError, InputError
from alkit.embedding.spec import WeightsSource

PRECISIONS = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "fp32"}  # alkit name -> open_clip's
# int8: the fp32 model with its nn.Linear layers dynamically quantised (weights int8, activations
# quantised per batch), CPU only. A different function of the pixels, so its own spec
# (`alkit.embedding.spec.for_precision`); agreement with fp32 in benchmarks/results_embed.md.
QUANTISED = ("int8",)
PROBE_PROMPT = "a photo"  # any prompt: only the shapes of the text tower's outputs are read
DEFAULT_IMAGE_SIZE = 224  # open_clip's input size for towers that do not record one
ERROR_LINE_CHARS = 400  # longest error reason shown (open_clip's messages can run to pages)


@dataclass(frozen=True)
class VectorDims:
    """Widths of what an encoder produces: D (embedding), d (phi) and d_t (psi); None where
    the tower has no linear last projection."""

    embedding: int
    phi: int | None
    text_phi: int | None


@dataclass
class Projection:
    """Where a tower's last linear projection lives: `owner.<name>`, a Parameter or a Linear."""

    owner: Any
    name: str

    @property
    def module(self):
        return getattr(self.owner, self.name)

    @property
    def is_linear(self) -> bool:
        import torch

        return isinstance(self.module, torch.nn.Linear)

    def matrix(self):
        """(d, D) float32 on CPU."""
        module = self.module
        weight = module.weight.T if self.is_linear else module
        return weight.detach().float().cpu().contiguous()

    def bias(self):
        if self.is_linear and self.module.bias is not None:
            return self.module.bias.detach().float().cpu().contiguous()
        return None

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict]:
        """Run the tower inside: `box["pre"]` is the projection input, `box["post"]` is filled
        by `finish(output)` for parameter projections (which are removed meanwhile)."""
        box: dict = {}
        if self.is_linear:
            handle = self.module.register_forward_pre_hook(lambda _m, args: box.__setitem__("pre", args[0]))
            try:
                yield box
            finally:
                handle.remove()
        else:
            parameter = self.module
            setattr(self.owner, self.name, None)
            box["parameter"] = parameter
            try:
                yield box
            finally:
                setattr(self.owner, self.name, parameter)


def _find_projection(candidates: list[tuple[Any, str]]) -> Projection | None:
    import torch

    for owner, name in candidates:
        if owner is None:
            continue
        value = getattr(owner, name, None)
        if isinstance(value, torch.nn.Parameter) and value.ndim == 2:
            return Projection(owner, name)
        if isinstance(value, torch.nn.Linear):
            return Projection(owner, name)
    return None


def image_projection(model) -> Projection | None:
    visual = model.visual
    head = getattr(visual, "head", None)
    return _find_projection([(visual, "proj"), (head, "proj")])


def text_projection(model) -> Projection | None:
    text = getattr(model, "text", None)
    return _find_projection([(model, "text_projection"), (text, "text_projection"), (text, "proj")])


def _run(projection: Projection | None, forward, inputs):
    """(post (B, D), pre (B, d) | None) of a tower."""
    if projection is None:
        return forward(inputs), None
    with projection.capture() as box:
        output = forward(inputs)
    if "parameter" in box:  # tower ran without its projection: output is the projection input
        return output @ box["parameter"], output
    return output, box["pre"]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or auto")
    return device


@dataclass
class OpenClipEncoder:
    """A loaded open_clip model with its preprocessing and tokenizer (eval mode, no grad)."""

    architecture: str
    model: Any
    preprocess: Any
    tokenizer: Any
    device: str
    image_proj: Projection | None = field(default=None)
    text_proj: Projection | None = field(default=None)

    @property
    def input_dtype(self):
        """dtype of the first conv/linear weight (low-precision casts skip norms and embeddings)."""
        import torch

        for module in self.model.visual.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                return module.weight.dtype
        return next(self.model.visual.parameters()).dtype

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg.get("size") or getattr(self.model.visual, "image_size", DEFAULT_IMAGE_SIZE)
        return int(max(size)) if isinstance(size, (tuple, list)) else int(size)

    @property
    def preprocess_cfg(self) -> dict:
        return dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})

    def encode_pixels(self, pixels):
        """pixels (B, 3, H, W) -> (emb (B, D) float32 unnormalised, phi (B, d) float32 | None), on CPU."""
        import torch

        with torch.no_grad():
            pixels = pixels.to(self.device, dtype=self.input_dtype, non_blocking=True)
            post, pre = _run(self.image_proj, self.model.visual, pixels)
            return post.float().cpu(), None if pre is None else pre.float().cpu()

    def encode_texts(self, prompts: list[str]):
        """prompts (K,) -> (emb (K, D) float32 unnormalised, psi (K, d_t) float32 | None), on CPU."""
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(list(prompts)).to(self.device)
            post, pre = _run(self.text_proj, self.model.encode_text, tokens)
            return post.float().cpu(), None if pre is None else pre.float().cpu()

    def vector_dims(self) -> VectorDims:
        """D, d and d_t of this model (one prompt through the text tower, no image needed)."""
        emb, psi = self.encode_texts([PROBE_PROMPT])
        phi = None if self.image_proj is None else int(self.image_proj.matrix().shape[0])
        return VectorDims(int(emb.shape[1]), phi, None if psi is None else int(psi.shape[1]))

    def projection_tensors(self) -> dict:
        """P (d, D), Q (d_t, D), optional biases, logit_scale (log s) and logit_bias, float32 CPU."""
        import torch

        tensors = {}
        for key, projection in (("P", self.image_proj), ("Q", self.text_proj)):
            if projection is not None:
                tensors[key] = projection.matrix()
                if projection.bias() is not None:
                    tensors[f"{key}_bias"] = projection.bias()
        for name in ("logit_scale", "logit_bias"):
            value = getattr(self.model, name, None)
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().float().cpu().reshape(())
        return tensors


@contextlib.contextmanager
def quiet_third_party_logging():
    """open_clip logs a failed hub download on the root logger before raising; alkit reports the
    error itself in one line, so those records are dropped unless alkit runs with --debug."""
    if logging.getLogger("alkit").isEnabledFor(logging.DEBUG):
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def one_line_reason(error: BaseException, limit: int = ERROR_LINE_CHARS) -> str:
    """The first line of an error, whole: cut only at a sentence or word end, never mid-word."""
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) <= limit:
        return text.rstrip(".")
    cut = text.rfind(". ", 0, limit)
    if cut < limit // 2:
        cut = text.rfind(" ", 0, limit)
    return text[:cut].rstrip(".,;:") + " (...)"


def load_open_clip(architecture: str, weights: WeightsSource, device: str = "cpu", precision: str = "fp32") -> OpenClipEncoder:
    """Create the model (downloading a hub tag's weights if needed) in eval mode."""
    import open_clip
    import torch

    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use fp32, fp16, bf16 or int8")
    from alkit.embedding.spec import check_architecture

    check_architecture(architecture)  # registers configs that ship with alkit
    device = resolve_device(device)
    if precision in QUANTISED and device != "cpu":
        raise ConfigError(
            f"--precision {precision} (dynamic quantisation) runs on CPU only, but the device is {device!r}; "
            "pass --device cpu, or use --precision fp16 on a GPU"
        )
    kwargs: dict[str, Any] = dict(pretrained=weights.value, precision=PRECISIONS[precision], device=device)
    parameters = inspect.signature(open_clip.create_model_and_transforms).parameters
    if weights.kind == "random" and "pretrained_text" in parameters:
        kwargs["pretrained_text"] = False  # no hub download of HF text towers for random weights
    try:
        with torch.random.fork_rng(devices=[]), quiet_third_party_logging():
            torch.manual_seed(weights.random_seed or 0)
            model, _, preprocess = open_clip.create_model_and_transforms(architecture, **kwargs)
    except RuntimeError as error:
        message = one_line_reason(error)
        if weights.kind == "tag":
            raise ExternalServiceError(
                f"cannot load {architecture} weights {weights.value!r}: {message}; check the network or "
                "download the checkpoint and pass --pretrained PATH"
            ) from None
        if weights.kind == "checkpoint":
            raise InputError(
                f"checkpoint {weights.value} does not fit {architecture}: {message}; pass the matching --model"
            ) from None
        raise
    model.eval()
    image_proj, text_proj = image_projection(model), text_projection(model)
    if precision in QUANTISED:
        quantise_linear_layers(model, keep=[p.module for p in (image_proj, text_proj) if p is not None and p.is_linear])
    tokenizer = open_clip.get_tokenizer(architecture)
    return OpenClipEncoder(
        architecture=architecture,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=device,
        image_proj=image_proj,
        text_proj=text_proj,
    )


def quantise_linear_layers(model, keep=()) -> int:
    """Replace every plain `nn.Linear` of `model` (in place) by its int8 dynamically quantised
    version (`torch.ao.quantization.quantize_dynamic`): weights int8 per tensor, activations
    quantised per batch, accumulation in int32, output float32. Left in float32: the layers in
    `keep` (the towers' linear last projections, whose input phi alkit stores and whose weights
    it reads as P and Q), attention's `out_proj` (a `NonDynamicallyQuantizableLinear`, read by
    `nn.MultiheadAttention` directly), convolutions, embeddings and norms. Returns how many
    layers were quantised."""
    import torch

    kept = {id(module) for module in keep}
    names = {
        name: torch.ao.quantization.default_dynamic_qconfig
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and id(module) not in kept
    }
    if names:
        with warnings.catch_warnings():  # torch 2.x deprecates the quantized tensor API it still uses here
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
            torch.ao.quantization.quantize_dynamic(model, qconfig_spec=names, dtype=torch.qint8, inplace=True)
    for module in model.modules():
        # open_clip's blocks read their dtype from `mlp.c_fc.weight`, a method on quantised layers;
        # the float tensors around the int8 matmuls stay float32.
        if hasattr(module, "get_weight_dtype"):
            module.get_weight_dtype = _float32
    return len(names)


def _float32():
    import torch

    return torch.float32
