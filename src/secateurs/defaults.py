"""The defaults a user meets, each in one place: the command line, the Python API and `secateurs plan`
all read them from here."""

CALIBRATION_SAMPLES = 64  # calibration documents drawn with the seed (--samples, --domain-samples, plan --windows)
CALIBRATION_SEQLEN = 512  # calibration window length in tokens (--seqlen)
BATCH_SIZE = 4  # windows per forward pass (--batch-size), in every method and every perplexity
EVAL_WINDOWS = 8  # windows of each perplexity set compared after pruning (--eval-max-windows)
PAPER_SEQLEN = 2048  # `secateurs eval --seqlen`: the pruning papers' perplexity window
PLAN_BLOCKS = 8  # blocks a structured search removes, for `secateurs plan --blocks`
DPRUNER_UPDATE_BATCH = 8  # D-Pruner's windows per update (--dpruner-batch-size)
DPRUNER_EPOCHS = 1  # D-Pruner's epochs of updates (--dpruner-steps)
