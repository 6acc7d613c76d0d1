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


class _Blocked:
    """Pickles a call of a function from a module torch's weights-only reader blocks (os): torch 2.14 words that
    refusal differently from an unknown global's."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


@pytest.mark.parametrize("payload", [_Blocked(), slice(1, 2)], ids=["blocked-module", "unknown-global"])
def test_pickled_objects_are_refused_with_the_trust_hint_whatever_torch_says(tmp_path, payload):
    path = tmp_path / "objects.pt"
    torch.save({"model": {}, "extra": payload}, path)
    with pytest.raises(PixelwiseError, match="--trust-checkpoint") as e:
        torch_load(path, what="checkpoint")
    assert "objects.pt" in str(e.value)


def test_garbage_is_not_mistaken_for_pickled_objects(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(7, 107)))
    with pytest.raises(PixelwiseError, match="could not be read as a PyTorch file") as e:
        torch_load(path, what="checkpoint")
    assert "--trust-checkpoint" not in str(e.value)
