"""files.torch_load: pickled objects are read only from the files named in trusting_pickles()."""
import pytest
import torch

from pixelwise.errors import PixelwiseError
from pixelwise.files import torch_load, trusting_pickles


class Thing:
    pass


def test_only_the_named_file_is_unpickled(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for p in (a, b):
        torch.save({"x": torch.ones(1), "thing": Thing()}, p)
    with pytest.raises(PixelwiseError, match="arbitrary code"):
        torch_load(a, what="checkpoint")
    with trusting_pickles(tmp_path / "." / "a.pt"):  # the same file, however it is spelt
        assert isinstance(torch_load(a, what="checkpoint")["thing"], Thing)
        with pytest.raises(PixelwiseError, match="arbitrary code"):
            torch_load(b, what="checkpoint")
    with pytest.raises(PixelwiseError, match="arbitrary code"):  # trust ends with the block
        torch_load(a, what="checkpoint")
    torch.save({"x": torch.ones(1)}, b)
    assert torch.equal(torch_load(b, what="checkpoint")["x"], torch.ones(1))  # tensors need no trust
