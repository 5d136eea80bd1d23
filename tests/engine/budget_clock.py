"""A fake clock for the time-budget tests, given as ``callbacks=<this file>:fake_clock`` (not a test module).

Time advances only with work: 1 s per trained batch and 2 s per validation, so a run's timings (and the
plan fitted from them) are the same in every launch and on every machine.
"""

NOW = [0.0]


def fake_clock():
    def start(trainer):
        NOW[0] = 0.0  # each launch starts its own clock (the budget counts from the launch's start)
        trainer.clock = lambda: NOW[0]

    def batch(trainer):
        NOW[0] += 1.0

    def val(trainer):
        NOW[0] += 2.0

    return {"on_pretrain_routine_start": start, "on_train_batch_end": batch, "on_val_end": val}
