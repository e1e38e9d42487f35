"""Calibration data: a .npz, a folder of .npz/.npy files, or ``random``; the sample count;
one clear error for data that does not fit the model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MODELS

from sparsec.analysis.activations import RANDOM_SAMPLES, load_calibration
from sparsec.errors import InputError
from sparsec.ir import Model

DIGITS = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_calib.npz"


@pytest.fixture(scope="module")
def model():
    return Model.load(DIGITS)


def test_npz_and_a_sample_count(model):
    full = load_calibration(CALIB, model)
    assert list(full) == ["input"] and full["input"].shape == (256, 1, 8, 8)
    assert load_calibration(CALIB, model, samples=10)["input"].shape[0] == 10


def test_a_folder_of_npz_and_npy_files_is_joined_in_file_name_order(model, tmp_path):
    data = np.load(CALIB)["input"]
    np.savez(tmp_path / "a.npz", input=data[:100])
    np.save(tmp_path / "b_input.npy", data[100:150])  # an .npy is named by its file: this one is not an input
    (tmp_path / "input").mkdir()
    with pytest.raises(InputError, match="holds no .npz or .npy file"):
        load_calibration(tmp_path / "input", model)  # an empty folder: one line, not a traceback
    np.save(tmp_path / "input.npy", data[100:150])
    joined = load_calibration(tmp_path, model)["input"]
    np.testing.assert_array_equal(joined, data[:150])


def test_random_is_seeded_and_sized(model):
    a, b = load_calibration("random", model, seed=3), load_calibration("random", model, seed=3)
    assert a["input"].shape == (RANDOM_SAMPLES, 1, 8, 8)
    np.testing.assert_array_equal(a["input"], b["input"])
    assert load_calibration("random", model, samples=5)["input"].shape[0] == 5


@pytest.mark.parametrize("arrays, message", [({"x": np.zeros((4, 1, 8, 8), np.float32)}, "no array for input"),
                                             ({"input": np.zeros((4, 8, 8), np.float32)}, "has rank 3")])
def test_data_that_does_not_fit_is_refused_in_one_line(model, tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(InputError, match=message):
        load_calibration(path, model)
    (tmp_path / "broken.npz").write_text("not an archive")
    with pytest.raises(InputError, match="cannot read calibration data"):
        load_calibration(tmp_path / "broken.npz", model)
