"""The train stage's own parts, without training: the loss history and per-arm peak memory."""

from __future__ import annotations


def test_loss_history_keeps_one_point_per_step_across_a_resume():
    from multilora_pipeline.tasks.training.train import loss_history

    log = [
        {"step": 2, "loss": 3.0, "learning_rate": 1e-3, "grad_norm": 1.0, "epoch": 0.1},
        {"step": 2, "eval_loss": 2.9},
        {"step": 4, "loss": 2.5, "learning_rate": 9e-4},
        # resumed from checkpoint-4: Trainer restored the log above and logs step 4 again
        {"step": 4, "loss": 2.4, "learning_rate": 9e-4},
        {"step": 6, "loss": 2.0},
        {"step": 6, "train_runtime": 1.0},  # the end-of-training summary is not a point
    ]
    assert loss_history(log) == [
        {"step": 2, "loss": 3.0, "learning_rate": 1e-3, "grad_norm": 1.0},
        {"step": 2, "eval_loss": 2.9},
        {"step": 4, "loss": 2.4, "learning_rate": 9e-4},
        {"step": 6, "loss": 2.0},
    ]


def test_peak_memory_is_measured_per_arm_not_per_process():
    import numpy as np

    from multilora_pipeline.tasks.training.memory import PeakMemory

    with PeakMemory("cpu") as first:
        big = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
        first.mb  # noqa: B018 -- samples while the array is alive (the thread may not run in time)
        del big
    with PeakMemory("cpu") as second:
        pass
    assert first.mb - second.mb > 200  # the second arm does not inherit the first one's peak
