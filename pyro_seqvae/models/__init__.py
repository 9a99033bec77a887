"""The model zoo: every model is a Pyro model ``model(x, mask, beta=1.0)``."""

from ..errors import ConfigError
from ..kwargs_check import check_keywords
from .base import Carry, LatentSequenceModel, SequenceModel
from .dmm import DMM
from .rnn import RNN
from .srnn import SRNN
from .storn import STORN
from .tsbn import TSBN
from .vrnn import VRNN

#: Name -> class, used by the CLI, the checkpoints and the tests.
MODELS = {"rnn": RNN, "vrnn": VRNN, "storn": STORN, "srnn": SRNN, "dmm": DMM,
          "tsbn": TSBN}


def make_model(name: str, /, **kwargs) -> SequenceModel:
    """Build a model by its registry name (``rnn``, ``vrnn``, ``storn``, ``srnn``, ``dmm``,
    ``tsbn``)."""
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    check_keywords(MODELS[key], kwargs, what=f"model {key!r} ({MODELS[key].__name__})")
    return MODELS[key](**kwargs)


def model_name(model) -> str:
    """The registry name of a model instance's class."""
    for key, cls in MODELS.items():
        if type(model) is cls:
            return key
    raise ConfigError(f"{type(model).__name__} is not a registered model")


__all__ = ["Carry", "DMM", "LatentSequenceModel", "MODELS", "RNN", "SRNN", "STORN",
           "SequenceModel", "TSBN", "VRNN", "make_model", "model_name"]
