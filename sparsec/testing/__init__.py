"""Testing kit: a seeded random ONNX graph generator and the fuzzing harness built on it
(``sparsec.testing.fuzz``). Not imported by sparsec itself."""
