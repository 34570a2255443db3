"""Collapsible linear block folding (SESR) and general linear folding: `fold-linear-blocks`."""

from __future__ import annotations

import dataclasses
import logging

import onnx_ir as ir
from onnxscript.rewriter import RewriteRuleSet
from passc.passes.fold_linear_blocks.conv_rules import AFFINE_OPS, FoldBranches, FoldChain
from passc.passes.fold_linear_blocks.matmul_rules import (
    FoldBiasedMatMulChain,
    FoldGemmChain,
    FoldMatMulChain,
    MergeChainBiases,
)

from passc.errors import UsageError
from passc.explain import RuleReport
from passc.pass_base import PasscPass
from passc.registry import register_pass
from passc.rule_tracing import NearMissTracer, RecordingRule

__all__ = ["FoldLinearBlocks"]

logger = logging.getLogger(__name__)


@register_pass("fold-linear-blocks")
class FoldLinearBlocks(PasscPass):
    """Folds chains and sums of linear ops (convs, BatchNorm, per-channel scales and shifts, residuals,
    Gemm and MatMul chains) into one op, as structural re-parameterisation (RepVGG, MobileOne,
    RepViT, FastViT) and SESR's collapsible blocks do by hand.

    Math (`conv_math.ConvMap`): A then B, B 1×1:  W[o,c,:] = Σ_p W_B[o,p] · W_A[p,c,:],
    b = W_B·b_A + b_B; k×k chains compose into the full convolution of their kernels; parallel
    branches add their kernels tap by tap (a residual adds 1 at the centre tap). A grouped conv is
    the dense conv with a block-diagonal weight, so grouped and depthwise convs fold group by group
    and keep the groups both sides share (the gcd of their counts). BatchNorm, Mul/Div/Add/Sub by a
    per-channel constant and the identity are depthwise 1×1 convs. A Gemm is a 0-d conv.
    MatMul chains: W = W1·W2, b = b1·W2 + b2.
    Exact in real arithmetic (tolerance 0); it never folds across a non-linearity, through a tensor
    with a second consumer, where padding or stride would make the result differ, or where the
    folded op would cost more multiply-accumulates than the ops it replaces (unless asked).
    """

    explains = True

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options:
        max_kernel: int = dataclasses.field(
            default=7, metadata={"help": "never grow a folded conv kernel past this size"}
        )
        allow_mac_increase: bool = dataclasses.field(
            default=False, metadata={"help": "fold even where the folded op costs more MACs"}
        )
        max_rounds: int = dataclasses.field(
            default=100, metadata={"help": "rewrite rounds; each folds one step of every chain"}
        )

        def __post_init__(self) -> None:
            if self.max_kernel < 1:
                raise UsageError("fold-linear-blocks.max_kernel must be at least 1")
            if self.max_rounds < 1:
                raise UsageError("fold-linear-blocks.max_rounds must be at least 1")

    def rules(self) -> RewriteRuleSet:
        o, fired = self.options, self.fired
        conv = {"max_kernel": o.max_kernel, "allow_mac_increase": o.allow_mac_increase}
        short = {"BatchNormalization": "batchnorm"}
        chains = [("Conv", "Conv")] + [
            pair for linear in ("Conv", "Gemm") for a in AFFINE_OPS for pair in ((linear, a), (a, linear))
        ]
        rules = [
            FoldChain.rule(f"{short.get(a, a).lower()}-{short.get(b, b).lower()}", fired, a, b, **conv)
            for a, b in chains
        ]
        for linear in ("Conv", "Gemm"):
            lin = linear.lower()
            for branch, tag in (
                (linear, lin),
                ("BatchNormalization", "batchnorm"),
                ("Mul", "scaled"),
                (None, "identity"),
            ):
                rules.append(FoldBranches.rule(f"{lin}-plus-{tag}", fired, linear, branch, **conv))
                rules.append(
                    FoldBranches.rule(f"{lin}-minus-{tag}", fired, linear, branch, "Sub", True, **conv)
                )
                rules.append(
                    FoldBranches.rule(f"{tag}-minus-{lin}", fired, linear, branch, "Sub", False, **conv)
                )
        return RewriteRuleSet(
            [
                *rules,
                FoldMatMulChain.rule("matmul-matmul", fired, o.allow_mac_increase),
                FoldBiasedMatMulChain.rule("matmul-add-matmul", fired, o.allow_mac_increase),
                MergeChainBiases.rule("merge-chain-biases", fired),
                FoldGemmChain.rule("gemm-gemm", fired, o.allow_mac_increase),
            ],
            commute=True,
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.fired.clear()
        report = self.report = RuleReport(fired=self.fired)
        created: set[ir.Node] = set()
        rules = self.rules().rules
        recording = RewriteRuleSet([RecordingRule(r.name, r, report.matches, created) for r in rules])
        for _ in range(self.options.max_rounds):
            if not recording.apply_to_model(model):  # type: ignore[arg-type]
                break
        if self.explain:
            by_name: dict[str, list] = {}
            for rule in rules:
                by_name.setdefault(rule.name, []).append(rule)
            for name, named in by_name.items():
                tracer = NearMissTracer(name, created)
                RewriteRuleSet(named).apply_to_model(model, tracer=tracer)
                report.near_misses.extend(tracer.near_misses())
        modified = bool(self.fired)
        if modified:
            ir.passes.common.RemoveUnusedNodesPass()(model)  # the replaced weights
            logger.info("fold-linear-blocks: %s", report.summary())
        return ir.passes.PassResult(model, modified=modified)
