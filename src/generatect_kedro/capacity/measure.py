"""Bytes of a forward pass measured on the meta device: shapes and dtypes only, nothing is allocated.

Why measure instead of a formula: what a forward keeps alive depends on every reshape, cast, mask and
saved tensor of the real model code; running that code on ``torch.device("meta")`` follows it as it is,
in seconds on a CPU, and cannot drift from the models.

* **Training activations** (`measure_training`): the bytes autograd saves for the backward pass during the
  loss's forward, seen through ``torch.autograd.graph.saved_tensors_hooks``. Each storage counts once (views
  and re-saves of one tensor are one allocation); parameters and buffers are excluded (they are weights).
  ``largest_tensor`` is the biggest single tensor any op produced: the backward pass briefly holds the
  gradient of such a tensor and of its input next to the saved activations, so the estimate adds twice it
  as *workspace*. Blocks run under gradient checkpointing (``recomputed``) are measured as if they were not:
  what they save counts as one *segment* (only the largest is alive again, recomputed in the backward
  pass), and only their inputs count as kept.
* **Inference working set** (`measure_inference`): the peak of live tensor storages during a no-grad call.
  A ``TorchDispatchMode`` sees every op's outputs; a weakref finalizer on each tensor sees it die (PyTorch keeps
  a tensor's Python object alive as long as the tensor itself, so the finalizer fires when the storage is
  really released). Weights and the caller's inputs, created before the call, are not counted.
* **GPU behaviour on meta** (`GpuEmulation`): there is no CUDA autocast and no fused attention kernel on
  meta, so a ``TorchFunctionMode`` emulates both:
  - bf16 autocast with CUDA autocast's op lists for the ops these models use: inputs of linear / conv /
    matmul / attention are cast to bf16, of norms, softmax, exp/log and losses to fp32, other ops follow type
    promotion; casts of parameters are cached for the whole region, as autocast caches them;
  - ``scaled_dot_product_attention`` runs as an autograd function that saves what the GPU's flash /
    memory-efficient kernels save (q, k, v, the output, the fp32 log-sum-exp and the mask), not the N×N
    attention matrix of the math path — unless the math backend is forced (``sdpa_kernel(MATH)``, as the
    discriminator's double backward requires), where the real math path runs and is counted, or the emulation
    is built with ``fused_attention=False`` (FLOP counting, `capacity.flops`: the math path's products are seen);
  - ``torch.is_autocast_enabled("meta")`` / ``torch.get_autocast_dtype("meta")`` answer as CUDA would (the
    models build their additive masks in the dtype SDPA computes in).

Approximations (each errs on the large side or is small): fused kernels' scratch memory and cuBLAS
workspaces are not seen (the report adds a fixed CUDA reserve); ops inside a composite function handled as a
whole (e.g. ``F.normalize``) run in the promoted dtype; the caching allocator's fragmentation is covered by
the headroom factor; DeepSpeed / DDP communication buckets are added by `memory`, not measured here.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

__all__ = ["GpuEmulation", "InferenceMeasurement", "TrainingMeasurement", "measure_inference", "measure_training",
           "storage_key"]


def storage_key(tensor: Tensor) -> int:
    """One number per storage (views of one tensor share it); meta storages have no data pointer."""
    return tensor.untyped_storage()._cdata


def _storage_bytes(tensor: Tensor) -> int:
    return int(tensor.untyped_storage().nbytes())


def _names(*names: str) -> set[Callable[..., Any]]:
    """The torch, torch.Tensor and torch.nn.functional callables of these names (where they exist)."""
    found = set()
    for name in names:
        for owner in (torch, torch.Tensor, F, torch.linalg, torch.special):
            value = getattr(owner, name, None)
            if value is not None:
                found.add(value)
    return found


# CUDA autocast's lists (torch.amp docs), restricted to what exists as a callable; dunder variants included.
_LOWER_PRECISION = _names("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                          "conv_transpose3d", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "addbmm",
                          "baddbmm", "addmv", "mv", "einsum", "bilinear", "prelu", "chain_matmul")
_FULL_PRECISION = _names("layer_norm", "group_norm", "softmax", "log_softmax", "softmin", "cross_entropy",
                         "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "binary_cross_entropy_with_logits",
                         "kl_div", "norm", "vector_norm", "normalize", "exp", "expm1", "log", "log1p", "log2",
                         "log10", "pow", "__pow__", "__rpow__", "rsqrt", "reciprocal", "softplus", "cumsum",
                         "cumprod", "prod", "sum", "cosine_similarity", "erfinv", "acos", "asin", "cosh", "sinh",
                         "tan", "cdist", "pdist", "dist", "renorm")


class _FusedAttention(torch.autograd.Function):
    """SDPA as the GPU's flash / memory-efficient kernels keep it: saves q, k, v, out, lse (and the mask)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        logsumexp = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.has_mask = mask is not None
        ctx.save_for_backward(q, k, v, out, logsumexp, *([mask] if mask is not None else []))
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, *_rest = ctx.saved_tensors
        mask_grad = torch.zeros_like(_rest[-1]) if ctx.has_mask and ctx.needs_input_grad[3] else None
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), mask_grad


def _fused_backend_enabled() -> bool:
    return bool(torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled())


class GpuEmulation(TorchFunctionMode):
    """CUDA bf16 autocast (when ``dtype`` is bf16) and fused attention, on meta tensors (see the module doc)."""

    def __init__(self, dtype: torch.dtype | None = torch.bfloat16, fused_attention: bool = True) -> None:
        super().__init__()
        self.dtype = dtype  # None: fp32, no autocast
        self.fused_attention = fused_attention  # False: SDPA runs its math path (FLOP counting sees its products)
        self._cast_cache: dict[int, Tensor] = {}
        self._patched: list[tuple[Any, str, Any]] = []

    # -- autocast queries on the meta device ------------------------------------------------------------
    def __enter__(self) -> GpuEmulation:
        enabled, dtype = self.dtype is not None, self.dtype or torch.float32
        for name, answer in (("is_autocast_enabled", enabled), ("get_autocast_dtype", dtype)):
            original = getattr(torch, name)

            def patched(*args: Any, _original: Any = original, _answer: Any = answer, **kwargs: Any) -> Any:
                device = args[0] if args else kwargs.get("device_type")
                if str(device) == "meta":
                    return _answer
                return _original(*args, **kwargs)

            self._patched.append((torch, name, original))
            setattr(torch, name, patched)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for owner, name, original in reversed(self._patched):
                setattr(owner, name, original)
            self._patched.clear()
            self._cast_cache.clear()

    # -- casts ---------------------------------------------------------------------------------------------
    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not (isinstance(value, Tensor) and value.is_floating_point() and value.dtype != dtype):
            return value
        cacheable = value.is_leaf and value.requires_grad  # parameters: cast once per region, as autocast does
        if cacheable and id(value) in self._cast_cache:
            return self._cast_cache[id(value)]
        cast = value.to(dtype)
        if cacheable:
            self._cast_cache[id(value)] = cast
        return cast

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._attention(func, args, kwargs)
        if self.dtype is not None and func in _LOWER_PRECISION:
            args, kwargs = tree_map(lambda v: self._cast(v, self.dtype), (args, kwargs))
        elif self.dtype is not None and func in _FULL_PRECISION:
            args, kwargs = tree_map(lambda v: self._cast(v, torch.float32), (args, kwargs))
        return func(*args, **kwargs)

    def _attention(self, func: Any, args: tuple, kwargs: dict) -> Tensor:
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        bound = dict(zip(names, args)) | kwargs
        if self.dtype is not None:
            bound = {k: self._cast(v, self.dtype) for k, v in bound.items()}
        if not (self.fused_attention and _fused_backend_enabled()) or bound.get("query").device.type != "meta":
            return func(**bound)
        mask = bound.get("attn_mask")
        if mask is not None and mask.dtype == torch.bool:  # kernels take an additive mask of the compute dtype
            mask = torch.zeros(mask.shape, dtype=bound["query"].dtype, device=mask.device)
        return _FusedAttention.apply(bound["query"], bound["key"], bound["value"], mask)


# ---- training -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingMeasurement:
    """Bytes autograd keeps for the backward pass of one micro-batch, and the backward's transients."""

    saved_bytes: int
    largest_tensor_bytes: int
    recompute_bytes: int = 0  # the largest checkpointed segment, alive again while it is recomputed

    @property
    def workspace_bytes(self) -> int:
        """Backward-pass transients: the gradients of the largest activation and of its input, plus the
        largest recomputed segment under gradient checkpointing."""
        return 2 * self.largest_tensor_bytes + self.recompute_bytes

    @property
    def total_bytes(self) -> int:
        return self.saved_bytes + self.workspace_bytes


class _LargestOutput(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.largest = max(self.largest, _storage_bytes(leaf))
        return out


def _weight_keys(modules: Iterable[nn.Module]) -> set[int]:
    return {storage_key(t) for m in modules for t in (*m.parameters(), *m.buffers())}


def measure_training(loss_fn: Callable[[], Any], modules: Iterable[nn.Module], *,
                     dtype: torch.dtype | None = torch.bfloat16,
                     recomputed: Iterable[nn.Module] = ()) -> TrainingMeasurement:
    """Run ``loss_fn`` (a forward + loss on meta tensors) and count what autograd saves for backward.

    ``recomputed``: blocks the model runs under gradient checkpointing; the caller switches checkpointing
    off for the measurement (so that their saved tensors are seen) and they are accounted as segments.
    """
    modules = list(modules)
    excluded = _weight_keys(modules)
    kept: dict[int, int] = {}
    segment: dict[int, int] = {}
    depth = [0]
    largest_segment = [0]

    def keep(tensor: Tensor, into: dict[int, int]) -> None:
        key = storage_key(tensor)
        if key not in excluded:
            into.setdefault(key, _storage_bytes(tensor))

    def pack(tensor: Tensor) -> Tensor:
        keep(tensor, segment if depth[0] else kept)
        return tensor

    def enter(_module: nn.Module, args: tuple) -> None:
        if depth[0] == 0:
            segment.clear()
            for value in tree_leaves(args):  # non-reentrant checkpointing keeps the block's inputs
                if isinstance(value, Tensor):
                    keep(value, kept)
        depth[0] += 1

    def leave(_module: nn.Module, _args: tuple, _out: Any) -> None:
        depth[0] -= 1
        if depth[0] == 0:
            largest_segment[0] = max(largest_segment[0], sum(segment.values()))

    handles = [h for block in recomputed for h in (block.register_forward_pre_hook(enter),
                                                   block.register_forward_hook(leave))]
    largest = _LargestOutput()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), GpuEmulation(dtype), largest:
            loss_fn()
    finally:
        for handle in handles:
            handle.remove()
    return TrainingMeasurement(saved_bytes=sum(kept.values()), largest_tensor_bytes=largest.largest,
                               recompute_bytes=largest_segment[0])


# ---- inference ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InferenceMeasurement:
    """Peak bytes of tensors alive at once during a no-grad call (weights and inputs excluded)."""

    peak_bytes: int


class _LiveBytes(TorchDispatchMode):
    """Tracks the storages ops create and when their last tensor dies; keeps the peak of their sum."""

    def __init__(self, excluded: set[int]) -> None:
        super().__init__()
        self.excluded = excluded
        self.live: dict[int, list[int]] = {}  # storage key -> [bytes, tensors alive]
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if not isinstance(leaf, Tensor):
                continue
            key = storage_key(leaf)
            if key in self.excluded:
                continue
            if key not in self.live:
                self.live[key] = [_storage_bytes(leaf), 0]
                self.current += self.live[key][0]
                self.peak = max(self.peak, self.current)
            self.live[key][1] += 1
            weakref.finalize(leaf, self._release, key)
        return out


@contextlib.contextmanager
def _no_grad_live(excluded: set[int]) -> Iterator[_LiveBytes]:
    tracker = _LiveBytes(excluded)
    with torch.no_grad(), tracker:
        yield tracker


def measure_inference(fn: Callable[[], Any], modules: Iterable[nn.Module], *,
                      dtype: torch.dtype | None = torch.bfloat16) -> InferenceMeasurement:
    """Run ``fn`` without gradients on meta tensors and return the peak of live tensor bytes."""
    excluded = _weight_keys(modules)
    with _no_grad_live(excluded) as tracker, GpuEmulation(dtype):
        result = fn()
        del result
    return InferenceMeasurement(peak_bytes=tracker.peak)
