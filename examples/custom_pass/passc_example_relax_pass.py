"""An example Relax-level passc plugin: adds an entry point `predict` that returns the class index
(argmax over the last axis) of another entry point's first output.

Relax passes run after import, on the whole Relax module, so they can add functions: the artifact
then has one more entry point (`passc run ART --function predict`). Use it without installing
(`passc compile m.onnx --plugin examples/custom_pass/passc_example_relax_pass.py --passes
canonicalize,add-argmax`) or install it (`pip install -e examples/custom_pass`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from passc import RelaxPass, RelaxPassResult, register_pass

__all__ = ["AddArgmax"]


@register_pass("add-argmax")
class AddArgmax(RelaxPass):
    """Adds a function returning argmax(source(x)[0], axis) as int64: the predicted class.

    Exact: the new function calls the source function unchanged, which stays an entry point.
    """

    @dataclass(frozen=True, kw_only=True)
    class Options:
        function: str = field(default="predict", metadata={"help": "the name of the added function"})
        source: str = field(default="main", metadata={"help": "the function whose first output it reads"})
        axis: int = field(default=-1, metadata={"help": "the axis of the classes"})

    def call(self, mod: Any) -> RelaxPassResult:
        from tvm import relax

        names = {gv.name_hint for gv in mod.get_global_vars()}
        if self.options.function in names:
            raise ValueError(f"the module already has a function {self.options.function!r}")
        if self.options.source not in names:
            raise ValueError(f"the module has no function {self.options.source!r}")
        source = mod.get_global_var(self.options.source)
        params = [relax.Var(p.name, p.ty) for p in mod[source].params]
        bb = relax.BlockBuilder(mod)
        attrs = {"passc.output_names": ["class"]}
        with bb.function(self.options.function, params, attrs=attrs):
            with bb.dataflow():
                outputs = bb.emit(relax.Call(source, params))
                if isinstance(outputs.ty, relax.TupleType):
                    outputs = bb.emit(relax.TupleGetItem(outputs, 0))
                label = bb.emit_output(relax.op.argmax(outputs, axis=self.options.axis))
            bb.emit_func_output(label)
        self.fired["function-added"] += 1
        return RelaxPassResult(bb.get(), modified=True)
