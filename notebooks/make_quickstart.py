"""Writes notebooks/quickstart.ipynb (without outputs) from the cells below.

The notebook is kept as this script's output so that its code is reviewed as code;
`python notebooks/make_quickstart.py` rewrites it, and tests/test_notebook.py checks the two
agree and runs the notebook at toy size.
"""
import pathlib

import nbformat

HERE = pathlib.Path(__file__).resolve().parent

INTRO = """# distill_jax quickstart

Train networks on a **distilled dataset** without **architecture overfitting** (Zhong & Liu).
A set distilled with a small ConvNet trains that ConvNet well and a ResNet-18 badly; the method
(DropPath with a three-phase keep rate, the improved shortcut, knowledge distillation from the
ConvNet, Lion with a periodic learning rate, 2-op DSA) closes the gap.

This notebook installs the package, gets a distilled set (one you have, or Fashion-MNIST distilled
here with DM), draws it, then trains the distiller's ConvNet (the KD teacher) and ResNet-18 with the
paper's **Baseline** recipe and with the **Full** method on whatever accelerator the runtime has,
several seeds in one vmapped program, and compares curves, schedules and final accuracies.
Schedules are the paper's divided by `EPOCH_DIVISOR` (learning rates multiplied by it);
`docs/method.md` describes every part.

**Installing the package.** The next cell installs `distill_jax` when the runtime does not have it,
from `PACKAGE_SOURCE`, the one setting at its top. Set it to what you have:
- a git repository the runtime can reach, e.g. `"git+https://github.com/<your-account>/distill_jax.git"`
  (your fork or copy of this repository; append `@<branch-or-tag>` to pin a version);
- or a wheel: build it in a checkout with `pip wheel --no-deps -w dist .`, upload
  `dist/distill_jax-<version>-py3-none-any.whl` with Colab's Files panel, and give its file name,
  e.g. `"distill_jax-0.1.0-py3-none-any.whl"`.

Left empty on a runtime without the package, the cell stops and says so."""

INSTALL = """# Where pip installs distill_jax from (see the first cell): a git URL you can reach, e.g.
# "git+https://github.com/<your-account>/distill_jax.git", or an uploaded wheel's file name.
PACKAGE_SOURCE = ""

# Installs the package once per runtime (skipped where it is installed already).
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("distill_jax") is None:
    if not PACKAGE_SOURCE:
        raise RuntimeError("distill_jax is not installed: set PACKAGE_SOURCE at the top of this cell to a git URL "
                           "or an uploaded wheel (the first cell says how), then run the cell again")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE_SOURCE], check=True)
    # GPU runtime: pip install -U "jax[cuda12]"; TPU runtime: pip install -U "jax[tpu]".
    # CPU runtime: apt-get install -y g++ libdnnl-dev for the fast (oneDNN) convolutions.
    # Fashion-MNIST comes from Debian's package: apt-get install -y dataset-fashion-mnist"""

PARAMETERS = """# Parameters (tests/test_notebook.py replaces this cell to run the notebook at toy size).
SET_PATH = ""          # a distilled set you have (any format `distill-jax inspect` reads); "" = distil one here
DATASET = "fashion_mnist"  # the real dataset of the set (its test split scores the networks)
IPC = 10               # images per class of the set distilled here
DISTILL_STEPS = 300    # DM steps (the paper runs 20k; 300 take minutes on a CPU)
EPOCH_DIVISOR = 20     # the paper's schedules / 20: Baseline 50 epochs, Full 200
WIDTH = 16             # ResNet-18 width (64 in the paper); depth is kept
TEACHER_WIDTH = 32     # the ConvNet teacher's width (128 in the paper)
SEEDS = 3              # trained together in one vmapped program
EVALS = 4              # test-set evaluations per run (the last epoch is always one)
WORKDIR = "quickstart_runs\""""

SETUP = """import pathlib

import jax
from IPython.display import Image, Markdown, display

from distill_jax import config as config_lib
from distill_jax.experiments import registry, reproduce
from distill_jax.formats.distilled import load_distilled, save_distilled
from distill_jax.report import show
from distill_jax.report.results_record import Role

print("JAX", jax.__version__, "on", jax.devices())
workdir = pathlib.Path(WORKDIR)
scale = registry.Scale(epoch_divisor=EPOCH_DIVISOR, lr_multiplier=float(EPOCH_DIVISOR), width=WIDTH,
                          teacher_width=TEACHER_WIDTH, evals=EVALS)"""

SET_MD = """## The distilled set

With `SET_PATH` empty the first cell of the experiment distils Fashion-MNIST with DM (the cell is
skipped when its workdir already holds the finished set). A set of yours is converted to the
package's own format in its place, and its distiller's network (ConvNet-FRePo with batch norm for
FRePo sets, the instance-norm ConvNet otherwise) becomes the teacher."""

SET = """distiller = "dm"
set_file = workdir / "distill" / "distilled.npz"
if SET_PATH:
    given = load_distilled(SET_PATH)
    distiller = "frepo" if given.provenance.get("source") == "frepo" else "dm"
    set_file.parent.mkdir(parents=True, exist_ok=True)
    save_distilled(given, set_file)
cells = registry.get_experiment(f"pipeline_{distiller}_{DATASET}_{IPC}_resnet18", workdir, scale, num_seeds=SEEDS)
cells = [c for c in cells if c.name != "real_subset" and not (SET_PATH and c.role is Role.DISTILL)]
for cell in cells:
    if cell.role is Role.DISTILL:
        cell.config.distill.steps = DISTILL_STEPS
registry.register_experiment("quickstart", lambda *args, **kwargs: cells)
for cell in cells:
    steps = (f"{cell.config.distill.steps} distillation steps" if cell.role is Role.DISTILL
             else f"{cell.config.num_seeds} seeds x {cell.config.train.epochs} epochs")
    print(f"{cell.name:8s} {cell.label}: {steps}")"""

RUN_MD = """## Distil (if needed), train the teacher, then ResNet-18 Baseline and Full

Each cell trains in its own sub-folder of `WORKDIR` with Orbax checkpoints: rerunning resumes.
Progress lines give the loss, accuracy, learning rate, keep rate, images/s, elapsed time and ETA;
every run also writes `metrics.jsonl` and TensorBoard events (`%tensorboard --logdir quickstart_runs`)."""

RUN = """config = config_lib.default_config()
config.mode, config.num_seeds = "reproduce", SEEDS
config.reproduce.experiment = "quickstart"
config.reproduce.epoch_divisor, config.reproduce.lr_multiplier = EPOCH_DIVISOR, float(EPOCH_DIVISOR)
config.reproduce.width, config.reproduce.teacher_width = WIDTH, TEACHER_WIDTH
summary = reproduce.run_reproduction(config, workdir)"""

LOOK = """shown = show.show_set(set_file, workdir / "set.png", dataset=DATASET)
display(Markdown(f"**The set** ({shown['images']} images, {shown['label_kind']} labels; "
                 f"{shown['preprocessing']} undone for display):"))
display(Image(filename=shown["out"]))"""

RESULTS_MD = """## Results

Final-epoch test accuracy, mean ± std over the seeds (nothing selected on the test set), the test
accuracy of every cell over training, and the Full recipe's keep-rate and learning-rate schedules."""

RESULTS = """display(Markdown(summary["summary"]))
display(Image(filename=str(workdir / "accuracy_by_cell.png")))
display(Image(filename=str(workdir / "full" / "schedules.png")))"""

FULL_LENGTH = """## At full length on a TPU/GPU VM

The paper's settings need an accelerator: 4000 epochs for the DropPath cells, widths 64 (ResNet-18)
and 128 (ConvNet). From a checkout (or `distill-jax run` with the same flags from a pip install):

```bash
pip install -e . && pip install -U "jax[cuda12]"      # or "jax[tpu]" on a TPU VM
python launch/main.py --config configs/reproduce.py:frepo_cifar10_10_resnet18 --workdir runs/frepo10
python launch/main.py --config configs/paper.py:resnet18,frepo,cifar10,10,full --workdir runs/full \\
    --config.train.kd.teacher_path=runs/frepo10/teacher
```

CIFAR comes from the official archives in the data root (`$DISTILL_JAX_DATA`, see the README);
rerunning a command resumes it from its last checkpoint."""


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    parameters = code(PARAMETERS)
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [md(INTRO), code(INSTALL), parameters, code(SETUP), md(SET_MD), code(SET), md(RUN_MD), code(RUN),
                code(LOOK), md(RESULTS_MD), code(RESULTS), md(FULL_LENGTH)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nb


if __name__ == "__main__":
    nbformat.write(build(), HERE / "quickstart.ipynb")
