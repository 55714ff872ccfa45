"""The small trained toy video model: its procedural training clips (``scenes``), caption vocabulary (``vocab``), the
pipeline with the packaged weights (``model``; ``load_tiny("toy-wan")``), trained by
``examples/toy/train_toy_model.py``."""
