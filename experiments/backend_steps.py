"""The two training backends step by step on real data: from the same ported initial weights and
the same batches of Fashion-MNIST, augmentation and dropout off and w fixed, the JAX step and the
PyTorch step train side by side; prints each one's loss at a few steps, the largest relative
difference so far, and both exits' validation accuracy at the end, as JSON lines.

    python experiments/backend_steps.py --steps 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import numpy as np
import torch

from ddnn_jax.core.config import TrainConfig
from ddnn_jax.core.training import (
    accuracy,
    build_model,
    create_train_state,
    make_predict_fn,
    make_train_step,
    predict_in_batches,
)
from ddnn_jax.data import load_dataset
from ddnn_jax.interop.convert import PARTS, torch_to_flax
from ddnn_jax.interop.torch_train import TorchTrainer


def _validate_torch(trainer: TorchTrainer, images: np.ndarray, labels: np.ndarray) -> list[float]:
    model = trainer.model.eval()
    with torch.no_grad():
        x = torch.tensor(images).permute(0, 3, 1, 2).float() / 255.0
        outputs = model((x - trainer.mean) / trainer.std)
    model.train()
    return [float((o.argmax(-1).numpy() == labels).mean()) for o in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps (batch 128)")
    parser.add_argument("--seed", type=int, default=0, help="the split and PyTorch's initial weights")
    parser.add_argument("--local-weight", type=float, default=0.5, help="the fixed w of the loss")
    args = parser.parse_args()

    config = dataclasses.replace(TrainConfig(), dropout_rate=0.0, seed=args.seed)
    data = load_dataset("fashion_mnist", split_seed=args.seed)
    trainer = TorchTrainer(
        data.image_shape,
        data.num_classes,
        mean=data.mean,
        std=data.std,
        crop_padding=0,
        horizontal_flip=False,
        local_weight=args.local_weight,
        seed=args.seed,
        architecture={"dropout_rate": 0.0},
    )
    state_dicts = {
        part: {k: v.detach().numpy() for k, v in getattr(trainer.model, part).state_dict().items()}
        for part in PARTS
    }
    ported = jax.tree.map(np.asarray, torch_to_flax(state_dicts))
    state = create_train_state(config, data.image_shape, data.num_classes)
    state = state.replace(params=ported["params"], batch_stats=ported["batch_stats"])
    step = make_train_step(
        local_weight=args.local_weight, mean=data.mean, std=data.std, horizontal_flip=False, crop_padding=0
    )
    order = np.random.default_rng(args.seed).permutation(len(data.train))
    worst = 0.0
    for i in range(args.steps):
        rows = order[i * 128 : (i + 1) * 128]
        batch = {"image": data.train.images[rows], "label": data.train.labels[rows]}
        state, metrics = step(state, batch, jax.random.key(i))
        ours = float(metrics["loss"])
        images = torch.tensor(batch["image"]).permute(0, 3, 1, 2).contiguous()
        theirs = float(trainer.step(images, torch.tensor(batch["label"], dtype=torch.long))[0])
        worst = max(worst, abs(ours - theirs) / abs(theirs))
        if i + 1 in (1, 10, 20, 50) or (i + 1) % 100 == 0 or i + 1 == args.steps:
            line = {"step": i + 1, "loss_jax": ours, "loss_torch": theirs, "max_relative_difference": worst}
            print(json.dumps(line), flush=True)

    predict = make_predict_fn(build_model(config, data.num_classes), data.mean, data.std)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    local, cloud = predict_in_batches(predict, variables, data.val.images, 1000)
    jax_val = [accuracy(local, data.val.labels), accuracy(cloud, data.val.labels)]
    torch_val = _validate_torch(trainer, data.val.images, data.val.labels)
    print(json.dumps({"steps": args.steps, "val_jax": jax_val, "val_torch": torch_val}))


if __name__ == "__main__":
    main()
