"""Lightning callbacks and plugins of a training run (``main.py``), one module per concern:

- `ldm.training.run_setup`: the run directory and its configs (`SetupCallback`);
- `ldm.training.checkpointing`: atomic checkpoint files, ``--resume``, top-k files across kills, and
  checkpoints on signals (`AtomicCheckpointIO`, `RunCheckpoint`, `SignalCheckpoint`);
- `ldm.training.progress`: progress lines and the step progress bar (`ProgressLog`, `StepProgressBar`);
- `ldm.training.image_logger`: image grids from the model's ``log_images`` (`ImageLogger`);
- `ldm.training.resources`: CUDA memory and the CPU thread count (`CUDACallback`, `ThreadWatch`).

Configs name these classes as ``ldm.callbacks.<Class>``, which re-exports them.
"""
