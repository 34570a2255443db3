"""The fuse rules by name, in the order a round applies them, with where each comes from.

Rule names are stable: `fuse.rules` options, `passc optimize` output and pass logs use them.
No-op removal runs first (it exposes patterns), then the fusions of larger patterns (attention,
norms, GELU), then layout chains (which could otherwise merge a Squeeze the attention pattern
expects into a Reshape), then the conv and matmul folds.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxscript.rewriter.pattern import RewriteRule
from passc.passes.fuse.attention import attention_rules
from passc.passes.fuse.constants import CONSTANTS
from passc.passes.fuse.conv_affine import conv_affine_rules
from passc.passes.fuse.gelu import gelu_rules
from passc.passes.fuse.gemm import gemm_rules
from passc.passes.fuse.layout import layout_rules
from passc.passes.fuse.no_ops import no_op_rules
from passc.passes.fuse.normalization import normalization_rules
from passc.passes.fuse.pad_folding import pad_rules

__all__ = ["RuleEntry", "IDENTITY", "CONSTANTS", "RULE_NAMES", "catalogue"]

# Not pattern rules: the pass itself folds small constants (constants.py) before every round and
# removes Identity nodes after it.
IDENTITY = "identity"

_REUSED = frozenset({"noop-cast", "noop-expand", "noop-transpose", "transpose-transpose"})
_REUSED |= {"reshape-reshape", "unsqueeze-unsqueeze"}


@dataclass(frozen=True)
class RuleEntry:
    name: str
    rules: tuple[RewriteRule, ...]
    needs: frozenset[str]  # op types a graph must contain for the rule to match anywhere
    source: str  # "onnxscript" (reused as is) or "passc"


# Op types each rule's pattern starts from; a rule is skipped on graphs without them.
_NEEDS = {
    "dropout": {"Dropout"},
    "noop-cast": {"Cast"},
    "noop-expand": {"Expand"},
    "noop-slice": {"Slice"},
    "noop-transpose": {"Transpose"},
    "transpose-transpose": {"Transpose"},
    "reshape-reshape": {"Reshape"},
    "noop-reshape": {"Reshape"},
    "unsqueeze-unsqueeze": {"Unsqueeze"},
    "squeeze-unsqueeze": {"Squeeze", "Unsqueeze"},
    "unsqueeze-squeeze": {"Squeeze", "Unsqueeze"},
    "squeeze-reshape": {"Squeeze", "Reshape"},
    "unsqueeze-reshape": {"Unsqueeze", "Reshape"},
    "flatten-reshape": {"Flatten", "Reshape"},
    "attention": {"Softmax", "MatMul"},
    "layer-norm": {"ReduceMean", "Sqrt", "Sub"},
    "layer-norm-bias": {"LayerNormalization", "Add"},
    "rms-norm": {"ReduceMean", "Sqrt"},
    "gelu-erf": {"Erf"},
    "gelu-tanh": {"Tanh"},
    "conv-batchnorm": {"Conv", "BatchNormalization"},
    "convtranspose-batchnorm": {"ConvTranspose", "BatchNormalization"},
    "conv-mul": {"Conv", "Mul"},
    "conv-add": {"Conv", "Add"},
    "convtranspose-mul": {"ConvTranspose", "Mul"},
    "convtranspose-add": {"ConvTranspose", "Add"},
    "pad-conv": {"Pad", "Conv"},
    "pad-averagepool": {"Pad", "AveragePool"},
    "pad-maxpool": {"Pad", "MaxPool"},
    "matmul-add-gemm": {"MatMul", "Add"},
}


def catalogue(attention: str = "decomposed") -> dict[str, RuleEntry]:
    """Every pattern rule, in application order. `attention` is the fuse pass option of that name."""
    groups = [
        no_op_rules(),
        attention_rules(attention),
        normalization_rules(),
        gelu_rules(),
        layout_rules(),
        conv_affine_rules(),
        pad_rules(),
        gemm_rules(),
    ]
    entries = {}
    for group in groups:
        for name, rules in group.items():
            source = "onnxscript" if name in _REUSED else "passc"
            entries[name] = RuleEntry(name, tuple(rules), frozenset(_NEEDS[name]), source)
    return entries


RULE_NAMES: tuple[str, ...] = (CONSTANTS, IDENTITY, *catalogue())
