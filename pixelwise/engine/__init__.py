"""Training, evaluation and inference shared by every model: tasks (one per model family), the run
builder, the loop with its hooks, the predictor."""
from pixelwise.engine.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.engine.hooks import HookBase
from pixelwise.engine.predictor import Predictor, forward_aligned
from pixelwise.engine.run import build_model, build_run
from pixelwise.engine.trainer import Trainer, TrainState, TrainingError, train

__all__ = ["HookBase", "Predictor", "TrainState", "Trainer", "TrainingError", "build_model",
           "build_run", "forward_aligned", "load_checkpoint", "save_checkpoint", "train"]
