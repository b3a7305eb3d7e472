"""Floating-point operations of a call, counted by running it: on meta tensors (shapes only, seconds on a CPU)
or on real ones (the benchmarks' warm-up step).

Why count instead of a formula: as for memory (`capacity.measure`), the real model code decides which products
run; counting its ops cannot drift from the models.

What is counted: ``torch.utils.flop_counter.FlopCounterMode`` sees every aten op and counts matrix products and
convolutions (mm, addmm, bmm, baddbmm, convolution and their backward passes), 2 FLOPs per multiply-add.
Elementwise ops, norms and softmax count nothing: a few per cent of these models' work, and the MFU convention
(PaLM, Megatron-LM) leaves them out too, so the counts here are the numerator of an MFU.

Attention (``scaled_dot_product_attention``) is counted on every device, as 4·B·H·N·M·d forward (QKᵀ and PV;
d = head width, N queries, M keys):

* meta tensors run SDPA's math path (`GpuEmulation` with ``fused_attention=False``): its two batched products
  are counted as bmm;
* CUDA's flash / memory-efficient / cuDNN kernels have FlopCounterMode formulas;
* the CPU's fused kernel (``_scaled_dot_product_flash_attention_for_cpu``) has none, so FlopCounterMode would
  count 0 for it: its forward and backward are added here.

Backward = 2 × forward (the four products dV, dP, dQ, dK), on every device: torch's formulas for the fused
CUDA kernels add the recomputation of QKᵀ (2.5 ×), which is the kernel's choice, not work the model asks for;
they are replaced here so that meta, CPU and CUDA counts agree. Likewise gradient checkpointing's recomputed
forward is not counted when the caller runs the loss without it (`capacity.meta_models` does): these are
*model* FLOPs, the MFU numerator, not the hardware's.

Convolution backward: torch's formula ignores ``groups`` for the weight gradient and counts a depthwise
convolution's (CT-ViT's position-encoding convolutions) ``channels`` times over; here each of the input and the
weight gradient costs what the forward does, as it does for every convolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

from generatect_kedro.capacity.measure import GpuEmulation

__all__ = ["count_flops", "count_training_flops", "flop_counter"]

aten = torch.ops.aten


def _attention_forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)


def _attention_backward(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
                        **kwargs: Any) -> int:
    """dV = Pᵀ·dO, dP = dO·Vᵀ, dQ = dS·K, dK = dSᵀ·Q: twice the forward's two products, no recomputation."""
    return 2 * sdpa_flop_count(query, key, value)


def _convolution_backward(grad_out: Any, x: Any, weight: Any, _bias: Any, _stride: Any, _padding: Any,
                          _dilation: Any, transposed: bool, _output_padding: Any, _groups: Any, output_mask: Any,
                          out_shape: Any = None, **kwargs: Any) -> int:
    """The input and the weight gradient each take the forward's multiply-adds (grouped or not)."""
    forward = conv_flop_count(x, weight, grad_out, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


# ops FlopCounterMode does not know (CPU attention), counts with a kernel's recomputation (CUDA attention backward)
# or miscounts (grouped convolution backward)
_FORMULAS: dict[Any, Callable[..., int]] = {
    aten.convolution_backward: _convolution_backward,
    aten._scaled_dot_product_flash_attention_for_cpu: _attention_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
    aten._scaled_dot_product_flash_attention_backward: _attention_backward,
    aten._scaled_dot_product_efficient_attention_backward: _attention_backward,
    aten._scaled_dot_product_cudnn_attention_backward: _attention_backward,
}


class _TotalOnly:
    """Stands in for FlopCounterMode's per-module tracker: every op counts towards "Global" only.

    The tracker's backward hooks break ``torch.autograd.grad`` inside a counted forward (the discriminator's
    gradient penalty, the adaptive GAN weight), and a total is all the callers here need.
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> _TotalOnly:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode with this module's attention and convolution formulas (see the module docstring),
    counting totals only."""
    counter = FlopCounterMode(display=False, custom_mapping=_FORMULAS)
    counter.mod_tracker = _TotalOnly()
    return counter


def count_flops(fn: Callable[[], Any], *, dtype: torch.dtype | None = None) -> int:
    """FLOPs of ``fn()`` run without gradients (a forward pass, a sampler step, a decode).

    ``dtype``: CUDA autocast emulated on meta tensors (`GpuEmulation`; casts change no count, but models with
    bf16 weights need their inputs cast). Leave None for real tensors: ``fn`` autocasts them itself if it wants.
    """
    with torch.no_grad(), GpuEmulation(dtype, fused_attention=False), flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def count_training_flops(loss_fn: Callable[[], Tensor], *, dtype: torch.dtype | None = None,
                         modules: Iterable[nn.Module] = ()) -> int:
    """FLOPs of one training micro-step: ``loss_fn()`` (forward + loss) and ``loss.backward()``.

    Gradients accumulate into ``.grad`` as in training; those of ``modules`` are cleared afterwards (set to None).
    """
    try:
        with GpuEmulation(dtype, fused_attention=False), flop_counter() as counter:
            loss_fn().backward()
    finally:
        for module in modules:
            module.zero_grad(set_to_none=True)
    return counter.get_total_flops()
