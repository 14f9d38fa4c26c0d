"""The digit models' training loop: one function, data already in memory, batched
augmentation. What a run writes in its directory, and how it resumes: :mod:`tinydigits.run`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data
from .augment import random_affine
from .errors import ConfigError
from .evaluate import evaluate
from .io import WeightsError, file_sha256, read_metadata
from .models import build_model, count_parameters, get_spec
from .optim import make_optimizer, make_schedule
from .recipes import Recipe
from .run import Run, RunResult
from .runtime import env_threads, keep_freed_memory, select_device, set_threads
from .weights import load_model

BACKGROUND = (0.0 - data.MEAN) / data.STD  # an empty pixel after normalization


# Teacher ensembles for distillation that ship with the package, so that a recipe can name one.
TEACHERS_DIR = Path(__file__).parent / "teachers"


def load_teachers(
    folder: str | Path, device: torch.device | str = "cpu"
) -> tuple[list[torch.nn.Module], dict[str, str]]:
    """The models of the weights files in ``folder`` (in eval mode), and each file's SHA-256
    (the run records which teacher). A folder that is not here, such as a recipe's
    ``results/teachers/<name>`` outside the repository, is the copy of that name shipped
    with the package (``tinydigits/teachers/<name>``), if there is one."""
    if not Path(folder).is_dir() and (TEACHERS_DIR / Path(folder).name).is_dir():
        folder = TEACHERS_DIR / Path(folder).name
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder}: no .safetensors teacher weights there (recipe field teacher)")
    # In channels_last, as the student trains (see train): docs/BENCHMARKS.md times the trainer
    # with its teachers in either layout ("Distillation's cost").
    models = [load_model(read_metadata(path).get("model", path.stem), path, device=device)
              .to(memory_format=torch.channels_last) for path in files]
    return models, {path.name: file_sha256(path) for path in files}


def ensemble_log_probs(models: list[torch.nn.Module], images: torch.Tensor) -> torch.Tensor:
    """The mean of the models' log-probabilities of ``images`` (normalized), [N, 10]."""
    total = torch.zeros(len(images), 10, device=images.device)
    with torch.no_grad():
        for model in models:
            for start in range(0, len(images), 2000):
                total[start : start + 2000] += model(images[start : start + 2000])
    return total / len(models)


def teacher_log_probs(folder: str | Path, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, str]]:
    """The ensemble of the weights files in ``folder`` on ``images``: its log-probabilities and
    the files' SHA-256s."""
    models, hashes = load_teachers(folder, images.device)
    return ensemble_log_probs(models, images), hashes


def distillation_loss(log_probs: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 so that its
    gradients keep their size as T changes (Hinton et al. 2015). Log-probabilities differ from
    logits by a constant per row, which softmax ignores."""
    student = F.log_softmax(log_probs / temperature, dim=1)
    target = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(student, target, reduction="batchmean", log_target=True) * temperature**2


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    generator: torch.Generator,
    on_step: Callable[[], Any] = lambda: None,
    teacher: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    augment: bool = True,
) -> tuple[float, float]:
    """One pass over shuffled batches, augmented unless ``augment`` is False; returns mean loss
    and accuracy (%). ``teacher(batch, index)``: the teacher's log-probabilities for the batch
    of ``images[index]`` as augmented, ``batch``, for distillation."""
    model.train()
    device = images.device
    order = torch.randperm(len(images), generator=generator, device=device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(images), recipe.batch_size):
        index = order[start : start + recipe.batch_size]
        batch = images[index]
        if augment:
            batch = random_affine(
                batch, degrees=recipe.rotation, translate=recipe.translate,
                scale=recipe.scale, elastic=recipe.elastic, elastic_sigma=recipe.elastic_sigma,
                background=BACKGROUND, generator=generator,
            )
        targets = labels[index]
        log_probs = model(batch)
        loss = F.nll_loss(log_probs, targets)
        if recipe.label_smoothing:
            # NLL against a target mixed with the uniform distribution.
            uniform = -log_probs.mean(dim=1).mean()
            loss = (1 - recipe.label_smoothing) * loss + recipe.label_smoothing * uniform
        if teacher is not None and recipe.distill:
            soft = distillation_loss(log_probs, teacher(batch, index), recipe.temperature)
            loss = (1 - recipe.distill) * loss + recipe.distill * soft
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        # Accumulate on the device: an .item() per step would force a sync on a GPU.
        loss_sum += loss.detach() * len(index)
        correct += (log_probs.argmax(dim=1) == targets).sum()
        on_step()
    return float(loss_sum) / len(images), float(correct) / len(images) * 100


def default_run_dir(model_name: str, seed: int, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{model_name}-seed{seed}-{stamp}"


def _recorded_threads(run_dir: Path) -> int | None:
    """The thread count a run's config.json records, or None where it cannot be read."""
    try:
        threads = json.loads((run_dir / "config.json").read_text()).get("threads")
    except (OSError, ValueError, AttributeError):
        return None
    return threads if isinstance(threads, int) and threads >= 1 else None


def check_recipe(model_name: str, recipe: Recipe) -> None:
    """Refuse, in one line, a recipe that sets fields this model's training would ignore."""
    spec = get_spec(model_name)
    unused = recipe.unused_by(spec.task)
    if unused:
        kind = "a number reader" if spec.task == "number" else "a digit model"
        fields = ", ".join(f"{name}={getattr(recipe, name)!r} (--{name.replace('_', '-')})"
                           for name in unused)
        raise ConfigError(f"{spec.name} is {kind}, whose training does not use {fields}; leave them out")


def train(
    model_name: str,
    recipe: Recipe,
    *,
    mnist: data.MNIST | None = None,
    data_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    device: str | None = None,
    threads: int | None = None,
    evaluate_test: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    subset: int | None = None,
) -> RunResult:
    """Train ``model_name`` with ``recipe``; with ``resume`` continue the run in ``run_dir``.
    ``subset`` keeps the first ``subset`` training images only (the validation split is taken
    from them), as ``tinydigits tune --subset`` trains its trials. Sets glibc's malloc
    thresholds for the whole process first (:func:`tinydigits.runtime.keep_freed_memory`)."""
    spec = get_spec(model_name)  # fail early on an unknown name
    keep_freed_memory()
    if not resume:  # a resumed run keeps the recipe it saved
        check_recipe(model_name, recipe)
    run_dir = Path(run_dir) if run_dir else default_run_dir(model_name, recipe.seed)
    if resume and threads is None and env_threads() is None:
        # The weights are bit-identical only at the same thread count, and the default follows
        # how busy the machine is: a resumed run keeps the count it started with.
        threads = _recorded_threads(run_dir)
    if spec.task == "number":
        from .sequence import train_reader

        if subset is not None:
            raise ConfigError("--subset is for the digit models; a number reader's strips are made "
                              "on the fly")
        if select_device(device).type != "cpu":
            raise ConfigError("the number reader trains on the CPU (its strips are made there, one at "
                              "a time)")
        return train_reader(spec.name, recipe, run_dir=run_dir, resume=resume, threads=threads,
                            data_dir=data_dir, evaluate_test=evaluate_test, log=log)
    threads = set_threads(threads)
    dev = select_device(device)
    state: dict[str, Any] = {}
    if resume:
        run, state = Run.resume(run_dir, log=log, needs=("shuffle_rng", "best_val", "cuda_rng"))
        recipe, model_name, subset = run.recipe, run.model_name, run.subset
        saved_device = torch.device(run.device)
        # The shuffling generator's state only fits a generator on the same kind of device.
        dev = select_device(device) if device else saved_device
        if dev.type != saved_device.type:
            raise WeightsError(f"{run_dir}: this run trained on {saved_device}; resume it there "
                               f"(--device {saved_device})")

    if subset is not None and not recipe.val_size < subset:
        raise ConfigError(f"subset {subset} leaves nothing to train on after the {recipe.val_size}-image "
                          "validation split; give a smaller --val-size")
    mnist = mnist if mnist is not None else data.load_mnist(data_dir)
    if subset is not None:
        mnist = data.MNIST(mnist.train_images[:subset], mnist.train_labels[:subset],
                           mnist.test_images, mnist.test_labels)
    train_x, train_y, val_x, val_y = data.split_train_val(
        mnist.train_images, mnist.train_labels, recipe.val_size, seed=0
    )
    train_x, train_y = data.normalize(train_x).to(dev), train_y.to(dev)
    val_x = data.normalize(val_x)
    teacher, teacher_files = None, {}
    if recipe.distill:
        teachers, teacher_files = load_teachers(recipe.teacher, dev)
        if recipe.teacher_augmented:
            def teacher(batch: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
                return ensemble_log_probs(teachers, batch)
        else:  # once, on the un-augmented images
            fixed = ensemble_log_probs(teachers, train_x)

            def teacher(batch: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
                return fixed[index]

    torch.manual_seed(recipe.seed)
    # channels_last weights make every activation after the first convolution channels_last.
    # At 1 thread, as runs train here, a step took 1.2x (Medium, Small) to 1.4x (Nano) less time
    # so on the AMD EPYC; at 2 threads NCHW was faster (docs/BENCHMARKS.md, rungs b -> c).
    # A 1-channel input batch is the same in either layout; saved weights are made contiguous.
    model = build_model(model_name, dropout=recipe.dropout).to(dev, memory_format=torch.channels_last)
    steps_per_epoch = -(-len(train_x) // recipe.batch_size)
    optimizer = make_optimizer(model.parameters(), recipe)
    schedule = make_schedule(optimizer, recipe, steps_per_epoch)
    shuffle = torch.Generator(device=dev).manual_seed(recipe.seed)
    best_val = -1.0

    if resume:
        Run.restore(state, model, optimizer, schedule)
        shuffle.set_state(state["shuffle_rng"])
        if dev.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        best_val = state["best_val"]
    else:
        run = Run.start(run_dir, model_name, recipe, subset=subset, device=str(dev), config={
            "threads": threads, "torch": torch.__version__, "parameters": count_parameters(model),
            "teacher_sha256": teacher_files})
        on = f", first {subset:,} training images" if subset is not None else ""
        log(f"training {model_name} (seed {recipe.seed}{on}) on {dev}, "
            f"{threads} thread{'' if threads == 1 else 's'}; "
            f"run directory: {run_dir}")

    for epoch in run.epochs_left:
        epoch_start = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{recipe.epochs}",
                   # None: shown on a terminal only, so logs get one line per epoch, not a bar's redraws
                   leave=False, disable=None if progress else True, unit="batch")
        train_loss, train_accuracy = train_one_epoch(
            model, optimizer, schedule, train_x, train_y, recipe, shuffle, on_step=bar.update,
            teacher=teacher, augment=epoch <= recipe.epochs - recipe.clean_epochs,
        )
        bar.close()

        val = evaluate(model, val_x, val_y) if len(val_x) else None
        h = {
            "epoch": epoch,
            "train_loss": round(train_loss, 6),
            "train_accuracy": round(train_accuracy, 4),
            "val_loss": round(val.loss, 6) if val else None,
            "val_accuracy": round(val.accuracy, 4) if val else None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - epoch_start, 3),
        }
        run.record(h)
        if val and val.accuracy > best_val:
            best_val = val.accuracy
            run.save_weights(model, "best.safetensors", epoch)
        run.checkpoint(model, optimizer, schedule, shuffle_rng=shuffle.get_state(), best_val=best_val,
                       cuda_rng=torch.cuda.get_rng_state_all() if dev.type == "cuda" else [])
        # Logged only once the epoch is safely on disk: Ctrl-C from here on loses nothing.
        val_text = f"val loss {h['val_loss']:.4f} acc {h['val_accuracy']:.2f}%" if val else "no val"
        log(f"epoch {epoch:2d}/{recipe.epochs}  train loss {h['train_loss']:.4f} "
            f"acc {h['train_accuracy']:.2f}%  {val_text}  lr {h['lr']:.5f}  {h['seconds']:.1f}s")

    def test_figures() -> dict[str, Any]:
        result = evaluate(model, data.normalize(mnist.test_images), mnist.test_labels)
        return {"accuracy": result.accuracy, "loss": result.loss,
                "per_class_accuracy": result.per_class_accuracy}

    done = run.finish(model, test_figures if evaluate_test else None)
    if done.test is not None:
        log(f"final test accuracy {done.test['accuracy']:.2f}% (loss {done.test['loss']:.4f}) "
            f"after {recipe.epochs} epoch{'' if recipe.epochs == 1 else 's'}, {done.seconds:.0f}s; "
            f"run saved in {run_dir}")
    return done
