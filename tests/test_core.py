import numpy as np
import pytest

from semid_spark.core import codes_to_ids


def test_plain_token_formatter():
    codes = np.array([[3, 9, 1], [0, 0, 12]])
    assert codes_to_ids(codes) == ["3-9-1", "0-0-12"]
    assert codes_to_ids(codes, sep="/") == ["3/9/1", "0/0/12"]
    assert codes_to_ids(codes, fmt="token") == ["<a_3><b_9><c_1>", "<a_0><b_0><c_12>"]
    assert codes_to_ids(codes, formatter=lambda r: f"x{r.sum()}") == ["x13", "x12"]


def test_token_letters_wrap_after_z():
    ids = codes_to_ids(np.arange(28)[None], fmt="token")[0]
    assert ids.endswith("<y_24><z_25><a_26><b_27>")


def test_bad_codes():
    with pytest.raises(ValueError, match="2-D"):
        codes_to_ids(np.array([1, 2]))
    with pytest.raises(ValueError, match="integers"):
        codes_to_ids(np.array([[1.5, 2.0]]))
