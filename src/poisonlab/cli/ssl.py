"""``poisonlab train ssl``."""

from __future__ import annotations

from pathlib import Path

import click

from poisonlab.cli.clip import train_group
from poisonlab.cli.common import (
    budget_options,
    generated_data_options,
    load_data,
    stream_options,
    training_out,
    training_run_options,
)
from poisonlab.cli.options import emit, json_option, parse_params
from poisonlab.models.classifier import DEFAULT_CLASSIFIER, create_encoder
from poisonlab.train import TrainConfig
from poisonlab.train.fit import train_ssl
from poisonlab.train.stream import DataConfig


@train_group.command("ssl")
@click.option("--method", default="moco", show_default=True, help="moco, byol or simclr.")
@click.option("--dataset", required=True, help="Unlabeled images: embedded name, path, or poison plan (.json).")
@click.option("--model", "arch", default=DEFAULT_CLASSIFIER, show_default=True, help="Bundled or timm backbone.")
@budget_options("encoder")
@click.option("--views", default="batched", show_default=True, help="batched (fast) or lightly (PIL transforms).")
@click.option("--param", "params", multiple=True, help="Method hyper-parameter KEY=VALUE (queue, temperature, ...).")
@generated_data_options
@training_run_options
@stream_options(training=False)
@json_option
def train_ssl_cmd(method: str, dataset: str, arch: str, config: TrainConfig, views: str, params: tuple[str, ...],
                  image_size: int, n: int | None, data_seed: int, resume: bool, out: Path, force: bool,
                  data_config: DataConfig, as_json: bool) -> None:
    """Self-supervised training of an image encoder (labels are never read).

    \b
    Example:
      poisonlab train ssl --method simclr --dataset runs/ssl-plan/plan.json --epochs 80 --out runs/ssl
    """
    data = load_data(dataset, size=image_size, n=n, seed=data_seed)
    bundle = create_encoder(arch, image_size, seed=config.seed)
    dist = training_out(out, force, (dataset,))
    result = train_ssl(bundle, data, config, method, out, resume=resume, dist=dist, views=views,
                       data_config=data_config, **parse_params(params, "--param"))
    summary = {"model": str(out / "model.safetensors"), "steps": result.steps, "final_loss": result.final_loss,
               "seconds": round(result.seconds, 2), "data": result.data}
    emit(summary, as_json, [f"{method}: {result.steps} steps, loss {result.final_loss:.4f}",
                            f"checkpoint: {summary['model']}"])
