"""Every task family under 2-process DDP on CPU (gloo): the ranks end with the same weights, and the validation
metrics are reduced over the ranks, not taken from rank 0 alone.

One subprocess trains the six families in turn (a few steps each, then one validation at the end of the epoch)
with ``Trainer(accelerator="cpu", devices=2, strategy="ddp")``; Lightning re-launches it as rank 1, and the gloo
process group is made once and reused by every later Trainer. Each rank saves its final state and its
``trainer.callback_metrics``. This process then checks, per family:

1. both ranks hold identical tensors (parameters, buffers, EMA generators, codebooks, noise generators);
2. training moved the weights away from their initialisation;
3. every validation metric is the same on both ranks and equals the metric of ONE process validating the union of
   the two ranks' shards (with rank 0's final state, batched as the ranks batched them: a per-batch statistic such
   as a VQ-VAE's perplexity depends on which images share a batch), and differs from the value on rank 0's shard
   alone — the validation data is built so that the shards disagree (even items, rank 0's under Lightning's
   ``DistributedSampler``, differ from odd ones), so a metric taken from rank 0 alone cannot pass.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from task_helpers import quiet_trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

from segen import GANTask, MaskToImageTask, SegmentationTask, UNet, VAETask, VQVAETask
from segen.nets import MultiscalePatchDiscriminator, SegmentationDiscriminator, SPADEGenerator
from segen.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from segen.nets.vae import VAEDecoder, VAEEncoder
from segen.tasks.base import NonFiniteLossError, SegenTask
from segen.tasks.instance import InstanceSegmentationTask

WORLD, BATCH = 2, 2  # 2 processes; every loader (train and validation) has batches of 2 per rank
VAL_SIZE = 8  # 2 validation batches per rank: no DistributedSampler padding, and the ranks' halves differ

# ---------------------------------------------------------------------------------------------------------- data
COLOURS = torch.tensor([[-0.8, -0.8, -0.8], [0.9, -0.6, -0.6], [-0.5, 0.2, 0.9]])  # one colour per class


def seg_pairs(n: int, seed: int) -> TensorDataset:
    """16 px ``(images, masks)`` of 3 classes, images in ``[-1, 1]`` (mean = std = 0.5): item ``i`` holds one
    rectangle of class ``1 + i % 2``, small for even items and large for odd ones, so rank 0's validation shard (even
    items) has no class 2, rank 1's no class 1, and their losses differ."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 16, 16, dtype=torch.long)
    for i in range(n):
        low, high = (3, 6) if i % 2 == 0 else (8, 13)
        h, w = torch.randint(low, high, (2,), generator=g).tolist()
        y, x = (
            torch.randint(0, 17 - h, (), generator=g).item(),
            torch.randint(0, 17 - w, (), generator=g).item(),
        )
        masks[i, y : y + h, x : x + w] = 1 + i % 2
    images = COLOURS[masks].permute(0, 3, 1, 2) + 0.2 * torch.randn(n, 3, 16, 16, generator=g)
    return TensorDataset(images.clamp(-1, 1), masks)


def gray_images(n: int, seed: int) -> TensorDataset:
    """1-channel 16 px images in ``[-1, 1]``: even items dark and smooth, odd items bright and noisy."""
    g = torch.Generator().manual_seed(seed)
    odd = (torch.arange(n) % 2).view(n, 1, 1, 1)
    level, noise = torch.where(odd == 1, 0.5, -0.6), torch.where(odd == 1, 0.5, 0.05)
    images = (level + noise * torch.randn(n, 1, 16, 16, generator=g)).clamp(-1, 1)
    return TensorDataset(images, torch.arange(n) % 3)


class InstancePairs(Dataset):
    """32 px images in ``[0, 1]`` with one large rectangle each (class ``1 + i % 2``), torchvision's target format."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            h, w = torch.randint(18, 29, (2,), generator=g).tolist()
            y, x = (
                torch.randint(0, 33 - h, (), generator=g).item(),
                torch.randint(0, 33 - w, (), generator=g).item(),
            )
            mask = torch.zeros(1, 32, 32, dtype=torch.uint8)
            mask[0, y : y + h, x : x + w] = 1
            label = 1 + i % 2
            image = 0.1 * torch.rand(3, 32, 32, generator=g)
            image[label] += 0.8 * mask[0]
            target = {
                "boxes": torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32),
                "labels": torch.tensor([label]),
                "masks": mask,
            }
            self.items.append((image, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.items[index]


def detection_collate(batch: list) -> tuple[list, list]:
    images, targets = zip(*batch)
    return list(images), list(targets)


# ---------------------------------------------------------------------------------------------------------- tasks
class NoiseFreeSPADE(SPADEGenerator):
    """SPADE that ignores its noise: ``val/seg_score`` draws each rank's noise from a rank-dependent seed, so only a
    noise-free generator makes the DDP value comparable with one process's."""

    def forward(self, z: Tensor, masks: Tensor) -> Tensor:
        return super().forward(torch.zeros_like(z), masks)


def segmentation() -> SegmentationTask:
    net = functools.partial(UNet, base_channels=4, depth=2)
    return SegmentationTask(num_classes=3, in_channels=3, net=net, warmup_steps=0, lr=1e-2)


def instance() -> InstanceSegmentationTask:
    task = InstanceSegmentationTask(
        num_classes=3,
        backbone="resnet18",
        input_min_size=32,
        input_max_size=32,
        anchor_sizes=(8, 16, 32, 64, 128),
        rois_per_image=32,
        trainable_backbone_layers=0,  # a frozen (random) ResNet: fewer gradients to all-reduce
        warmup_steps=0,
        lr=3e-4,
    )
    # a narrow box head (torchvision's 1024-wide one is 13M parameters), evaluated on a few proposals (its 1000 per
    # image make a CPU validation take seconds)
    heads = task.model.roi_heads
    heads.box_head = TwoMLPHead(heads.box_head.fc6.in_features, 64)
    heads.box_predictor = FastRCNNPredictor(64, 3)
    heads.detections_per_img, heads.score_thresh = 10, 0.0  # always some detections: mAP > 0 early on
    rpn = task.model.rpn
    rpn._pre_nms_top_n["testing"], rpn._post_nms_top_n["testing"] = 100, 20
    return task


def gan() -> GANTask:
    return GANTask(
        channels=1,
        image_size=16,
        latent_dim=8,
        fid_feature=None,  # FID/KID draw rank-seeded samples: not comparable with one process by design
        generator=functools.partial(DCGANGenerator, base_channels=8),
        discriminator=functools.partial(DCGANDiscriminator, base_channels=8),
        lr=1e-3,
    )


def vae() -> VAETask:
    return VAETask(
        channels=1,
        image_size=16,
        latent_dim=4,
        encoder=functools.partial(VAEEncoder, base_channels=8),
        decoder=functools.partial(VAEDecoder, base_channels=8),
        iwae_samples=4,
        fid_feature=None,
        warmup_steps=0,
    )


def vqvae() -> VQVAETask:
    task = VQVAETask(
        channels=1,
        image_size=16,
        num_embeddings=16,
        embedding_dim=4,
        hidden=8,
        num_res_blocks=1,
        warmup_steps=0,
    )
    task.quantizer.restart_every = 2  # dead-code restarts (rank 0's pick, broadcast) within the few steps
    return task


def mask_to_image(discriminator_type: str = "patch") -> MaskToImageTask:
    """The PatchGAN variant checks ``val/d_real`` too: it differs between the shards at once. The default
    segmentation discriminator's is near 0.75 on any image before training, so that family checks the seg scores."""
    torch.manual_seed(1)  # the segmenter (outside the module tree, never trained) must be the same everywhere
    segmenter = SegmentationTask(num_classes=3, net=functools.partial(UNet, base_channels=4, depth=2))
    discriminators = {
        "patch": lambda channels, image_size, num_classes: MultiscalePatchDiscriminator(
            num_classes=num_classes, channels=channels, base_channels=8
        ),
        "segmentation": lambda channels, image_size, num_classes: SegmentationDiscriminator(
            num_classes=num_classes, channels=channels, base_channels=8, depth=2
        ),
    }
    return MaskToImageTask(
        num_classes=3,
        channels=3,
        image_size=16,
        latent_dim=4,
        generator=functools.partial(NoiseFreeSPADE, base_channels=8, max_channels=16, hidden=8),
        discriminator=discriminators[discriminator_type],
        discriminator_type=discriminator_type,
        segmenter=segmenter,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )


@dataclass(frozen=True)
class Family:
    build: Callable[[], LightningModule]
    data: Callable[[int, int], Dataset]  # (n, seed) -> n items; even items differ from odd ones
    steps: int  # optimizer steps (training batches) on every rank
    metrics: tuple[str, ...]  # validation metrics that must be reduced over ranks
    collate: Callable | None = None

    def train_loader(self) -> DataLoader:
        return self.loader(self.data(WORLD * BATCH * self.steps, 0))

    def val_set(self) -> Dataset:
        return self.data(VAL_SIZE, 1)

    def loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=BATCH, collate_fn=self.collate)


FAMILIES = {
    "segmentation": Family(
        segmentation, seg_pairs, 8, ("val/loss", "val/mIoU", "val/dice", "val/acc", "val/IoU_0")
    ),
    "instance": Family(
        instance,
        InstancePairs,
        4,
        ("val/mAP_mask", "val/mAP_box", "val/mAP50_mask", "val/mAP50_box"),
        detection_collate,
    ),
    "gan": Family(gan, gray_images, 4, ("val/d_real",)),
    "vae": Family(
        vae, gray_images, 4, ("val/elbo", "val/recon", "val/kl", "val/bpd", "val/mse", "val/nll_iwae")
    ),
    "vqvae": Family(vqvae, gray_images, 6, ("val/recon", "val/perplexity", "val/usage")),
    "mask_to_image": Family(
        mask_to_image, seg_pairs, 4, ("val/d_real", "val/seg_score", "val/seg_score_real")
    ),
    "mask_to_image_segmentation_d": Family(
        functools.partial(mask_to_image, "segmentation"),
        seg_pairs,
        4,
        ("val/seg_score", "val/seg_score_real"),
    ),
}


def generator_states(task: LightningModule) -> dict[str, Tensor]:
    """The states of the task's own noise generators (``noise_rng``): not in the state dict, but they must agree too."""
    return {
        name: value.get_state() for name, value in vars(task).items() if isinstance(value, torch.Generator)
    }


def rank_draws(task: LightningModule) -> dict[str, Tensor]:
    """A training step's random draws on this rank, still attached to the DDP Trainer: the generator noise (GAN,
    mask-to-image), the reparameterisation noise (VAE, in training mode) and DiffAugment's parameters."""
    draws = {}
    task.train()
    if isinstance(task, GANTask):
        draws["noise"] = task._noise(3)  # (3, latent_dim)
        draws["augment"] = torch.rand(4, generator=task.per_rank_generator(task.augment_rng))
    if isinstance(task, VAETask):
        draws["noise"] = task._noise((3, task.hparams.latent_dim))
    return draws


def train_every_family_on_this_rank(out: str) -> None:
    """The subprocess (both ranks): fit each family for one short epoch with a validation at its end, then save this
    rank's state and validation metrics to ``<out>/<family>_rank<r>.pt``."""
    import torch.distributed as dist

    for name, family in FAMILIES.items():
        start = time.perf_counter()
        torch.manual_seed(0)
        task = family.build()
        trainer = quiet_trainer(Path(out), devices=WORLD, strategy="ddp", max_epochs=1)
        trainer.fit(task, family.train_loader(), family.loader(family.val_set()))
        rank = trainer.global_rank
        generators = generator_states(task)  # as validation left them: the reference validation starts there
        draws = rank_draws(task)
        torch.save(
            {
                "state": task.state_dict(),
                "draws": draws,
                "generators_after_draws": generator_states(task),
                "generators": generators,
                "metrics": {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
            },
            Path(out) / f"{name}_rank{rank}.pt",
        )
        print(f"rank {rank}: {name} took {time.perf_counter() - start:.1f} s", file=sys.stderr)
    nan_guard_on_one_rank(task, Path(out))
    dist.barrier()  # rank 0 exits only after rank 1 has written its files


def nan_guard_on_one_rank(task: SegenTask, out: Path) -> None:
    """The ``"raise"`` guard with a loss that is NaN on rank 1 only, through the same calls as a training step
    (``loss_is_usable``, then the read at the optimizer step), still attached to the DDP Trainer: each rank saves
    what the read did. Not a second fit: a raise inside ``Trainer.fit`` makes rank 0's launcher kill rank 1."""
    rank = task.trainer.global_rank
    task.hparams["nan_policy"] = "raise"
    loss = torch.tensor(math.nan if rank == 1 else 0.5)
    usable = task.loss_is_usable({"loss": loss, "other": torch.tensor(1.0)})
    try:
        task.settle_loss_checks()
        outcome = "no error"
    except NonFiniteLossError as error:
        outcome = str(error)
    torch.save({"usable": usable, "outcome": outcome}, out / f"nan_guard_rank{rank}.pt")


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_ddp import train_every_family_on_this_rank
    train_every_family_on_this_rank(sys.argv[1])
    """
)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_every_task")
    script = out / "ddp_every_task.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=400, env=env, cwd=out
    )
    assert result.returncode == 0, f"the 2-process DDP run failed:\n{result.stderr[-5000:]}"
    return out


def flat(state: dict[str, Any]) -> dict[str, Tensor]:
    """Tensors of a state dict, with a module's extra state (a dict of tensors) spread out."""
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items() if isinstance(v, Tensor)})
        elif isinstance(value, Tensor):
            out[key] = value
    return out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


@pytest.fixture
def one_thread():
    """The reference validations run on one thread, as the ranks do: tiny convolutions on two threads of a shared
    2-core machine are several times slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_two_process_ddp_ends_with_identical_ranks_and_reduces_validation_metrics(
    name, ddp_runs, one_thread, tmp_path
):
    family = FAMILIES[name]
    rank0, rank1 = (torch.load(ddp_runs / f"{name}_rank{r}.pt", weights_only=False) for r in range(WORLD))

    # 1. the ranks agree on every tensor: weights, buffers, EMA generator, codebook, noise generators
    state0, state1 = flat(rank0["state"]), flat(rank1["state"])
    assert state0.keys() == state1.keys(), f"{name}: the ranks' state dicts have different keys"
    differ = [k for k in state0 if not torch.equal(state0[k], state1[k])]
    assert not differ, f"{name}: after DDP training the ranks hold different tensors: {differ[:10]}"
    for key, value in rank0["generators"].items():
        assert torch.equal(value, rank1["generators"][key]), f"{name}: the ranks' {key} states differ"
    # ... yet they draw different noise and augmentations from those shared streams (else a GAN's G would see
    # one batch of fakes WORLD times, and DDP would not grow its batch)
    for key, value in rank0["generators_after_draws"].items():
        assert torch.equal(value, rank1["generators_after_draws"][key]), f"{name}: drawing moved {key} apart"
    for key, value in rank0["draws"].items():
        assert value.shape == rank1["draws"][key].shape
        assert not torch.equal(value, rank1["draws"][key]), f"{name}: both ranks drew the same {key}"
    assert rank0["draws"] or name in ("segmentation", "instance", "vqvae")

    # 2. it trained: every submodule with float state moved away from the (shared, seeded) initialisation
    torch.manual_seed(0)
    task = family.build()
    initial = flat(task.state_dict())
    floats = [k for k, v in initial.items() if v.is_floating_point() and "." in k]  # submodules' tensors
    modules = {k.split(".")[0] for k in floats}
    moved = {k.split(".")[0] for k in floats if not torch.equal(initial[k], state0[k])}
    assert moved == modules, f"{name}: these submodules did not train under DDP: {sorted(modules - moved)}"

    # 3. the metrics are reduced over ranks: one process on the union of the shards == both ranks != rank 0 alone
    task.load_state_dict(rank0["state"])
    for key, value in rank0["generators"].items():
        getattr(task, key).set_state(value)
    val = family.val_set()
    shards = [
        list(range(r, VAL_SIZE, WORLD)) for r in range(WORLD)
    ]  # DistributedSampler's split (no shuffle)
    union, alone = (
        quiet_trainer(tmp_path).validate(task, family.loader(Subset(val, indices)), verbose=False)[0]
        for indices in (shards[0] + shards[1], shards[0])
    )
    for metric in family.metrics:
        assert metric in rank0["metrics"], (
            f"{name}: {metric} was not logged; logged: {sorted(rank0['metrics'])}"
        )
        ddp0, ddp1 = rank0["metrics"][metric], rank1["metrics"][metric]
        assert ddp0 == ddp1, (
            f"{name}: {metric} differs between ranks ({ddp0} vs {ddp1}): not reduced over ranks"
        )
        assert close(ddp0, union[metric]), (
            f"{name}: {metric} under DDP is {ddp0}, but one process on the whole validation set gives "
            f"{union[metric]} (rank 0's shard alone: {alone[metric]}): the metric is not reduced over the ranks"
        )
        assert not math.isclose(alone[metric], union[metric], rel_tol=1e-3, abs_tol=1e-4), (
            f"{name}: {metric} is {alone[metric]} on rank 0's shard and {union[metric]} on the whole set: the "
            "validation data must make the shards disagree, or this test cannot see a rank-0-only metric"
        )


def test_the_raise_guard_agrees_over_ranks_when_one_rank_sees_a_nan(ddp_runs):
    """Under DDP the ``"raise"`` flag is reduced on the device before its copy to the host: both ranks raise, the
    clean rank saying another rank's loss was not finite, so neither waits in a collective the other never joins."""
    rank0, rank1 = (torch.load(ddp_runs / f"nan_guard_rank{r}.pt", weights_only=False) for r in range(WORLD))
    assert rank0["usable"] is rank1["usable"] is True  # the check is read later, at the optimizer step
    assert "finite on this rank; not finite on another rank" in rank0["outcome"], rank0["outcome"]
    assert "non-finite loss at" in rank1["outcome"] and "loss=nan" in rank1["outcome"], rank1["outcome"]
    assert "other=" not in rank1["outcome"]  # only the parts that are not finite are named
