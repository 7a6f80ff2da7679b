"""Training settings shared by every config (each config overrides what it needs)."""

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # parameters, data order, dropout and LSH rotations all derive from it
    config.task = "lm"  # the objective (reformer_jax/train/tasks.py TASKS): "lm", "classification"
    config.seq_len = 1024
    config.data = ml_collections.ConfigDict(dict(name="duplication", settings={}))
    config.model = ml_collections.ConfigDict()  # fields of reformer_jax.config.ReformerConfig
    config.batch_size = 8  # global, over all processes and devices
    config.num_steps = 1000
    config.optimizer = "adam"  # or "adafactor" (the paper)
    config.learning_rate = 1e-3
    config.schedule = "rsqrt"  # Trax: linear warm-up then 1/sqrt(step); "constant", "cosine"
    config.warmup_steps = 1000
    config.adam_b1, config.adam_b2, config.adam_eps = 0.9, 0.98, 1e-9  # Trax's enwik8 values
    # Decoupled decay, multiplied by the learning-rate schedule for adam and adafactor alike
    # (AdamW's convention): each step subtracts lr(step) * weight_decay * param.
    config.weight_decay = 0.0
    config.grad_clip = 0.0  # global-norm clipping; 0 disables
    config.grad_accum_steps = 1  # micro-batches per step (batch_size must divide)
    config.mesh_shape = (-1, 1)  # (data, model) devices; -1: all remaining
    config.log_every = 50
    config.eval_every = 1000
    config.eval_batches = 8  # 0: one whole pass over the (finite) evaluation split
    config.eval_batch_size = 0  # 0: batch_size
    # lm_memory task: evaluation memory length (None: the training mem_len; 0: none).
    config.eval_mem_len = config_dict.placeholder(int)
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.eval_hashes = []  # e.g. [1, 2, 4, 8]: print the hash-count table at the end
    config.stop_at_step = 0  # > 0: behave as if preempted (SIGTERM) after this step (tests)
    return config
