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


def test_check_embeddings_counts_bad_rows_across_its_blocks(monkeypatch):
    """NaN/Inf are looked for a block of rows at a time (no (n, d) mask); the message still counts every
    bad row and names the first, wherever the blocks fall."""
    from semid_spark import core
    from semid_spark.exceptions import InvalidInputError

    monkeypatch.setattr(core, "CHECK_BLOCK_BYTES", 3 * 4 * 4)  # 3 rows of d = 4 per block
    x = np.zeros((20, 4), dtype=np.float32)
    x[[5, 6, 19], [0, 3, 2]] = [np.nan, np.inf, -np.inf]
    with pytest.raises(InvalidInputError, match=r"NaN or Inf values in 3 of 20 rows \(first at row 5\)"):
        core.check_embeddings(x)
    assert core.check_embeddings(x[:5]) is not None
