"""A fake clock for the time-budget tests, given as ``callbacks=<this file>:fake_clock`` (not a test module).

Time advances only with work: 1 s (or as the variants below say) per trained batch and 2 s per validation,
so a run's timings (and the plan fitted from them) are the same in every launch and on every machine.
"""

NOW = [0.0]


def fake_clock(per_batch: float = 1.0, later: float | None = None):
    def start(trainer):
        NOW[0] = 0.0  # each launch starts its own clock (the budget counts from the launch's start)
        trainer.clock = lambda: NOW[0]

    def batch(trainer):
        NOW[0] += per_batch if later is None or trainer.epoch == 0 else later

    def val(trainer):
        NOW[0] += 2.0

    return {"on_pretrain_routine_start": start, "on_train_batch_end": batch, "on_val_end": val}


def slow_clock():
    """8 s per batch: the tests' 3-batch epoch takes 2/3 of a 36 s budget."""
    return fake_clock(8.0)


def slowing_clock():
    """1 s per batch in the first epoch, 20 s per batch later (the machine got busy)."""
    return fake_clock(1.0, 20.0)
