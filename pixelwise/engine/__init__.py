"""Training, evaluation and inference shared by every model."""
from pixelwise.engine.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.engine.evaluator import evaluate
from pixelwise.engine.predictor import Predictor, forward_aligned
from pixelwise.engine.trainer import TrainState, TrainingError, build_model, train

__all__ = ["Predictor", "TrainState", "TrainingError", "build_model", "evaluate", "forward_aligned",
           "load_checkpoint", "save_checkpoint", "train"]
