"""passc.graph, the helpers passes share: the BatchNormalization map checked against onnxruntime."""

from __future__ import annotations

import numpy as np

from passc import oracle
from passc.graph import batchnorm_affine, unused_initializer_name
from tests.conftest import weighted_model


def test_batchnorm_affine_is_what_onnxruntime_computes() -> None:
    rng = np.random.default_rng(0)
    params = {
        "g": rng.uniform(0.5, 1.5, 6).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
        "m": rng.standard_normal(6).astype(np.float32),
        "v": rng.uniform(0.5, 2.0, 6).astype(np.float32),
    }
    body = "y = BatchNormalization<epsilon = 0.01>(x, g, b, m, v)"
    model = weighted_model("(float[2, 6, 5, 4] x) => (float y)", body, **params)
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    (expected,) = oracle.run_onnxruntime(model, {"x": x}).values()

    scale, shift = batchnorm_affine(next(iter(model.graph)), *params.values())

    assert scale.dtype == shift.dtype == np.float64
    got = x * scale.reshape(1, 6, 1, 1) + shift.reshape(1, 6, 1, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_new_initializer_names_never_clash() -> None:
    model = weighted_model("(float[2] x) => (float y)", "y = Add(x, w)", w=np.ones(2, np.float32))
    assert unused_initializer_name(model.graph, "w") == "w_1"
    assert unused_initializer_name(model.graph, "v") == "v"
