"""The config schema: every field any run may set, with its default.

Config files (`configs/*.py`, or any file of a user's own) start from `default_config()` and
override fields; `distill_jax.config.validate` rejects fields that are not defined here.
The defaults train a ConvNet on a 10-images-per-class subset of Fashion-MNIST (Debian's
`dataset-fashion-mnist`), which runs offline in a few minutes on a CPU.

This module sits low in the package and imports nothing of it: training and distillation read
the defaults here and take a config that is already valid, while `distill_jax.config` (which
imports every mode's modules to check the allowed values) validates where a config enters: at
the launch, and for each cell an experiment builds.
"""
import ml_collections

# What `mode` may name: what a launch does (`distill_jax.modes` dispatches each to its module).
MODES = ("train", "teacher", "student", "distill", "evaluate", "reproduce", "transfer")


def default_config() -> ml_collections.ConfigDict:
    """Every field any run may set, with its default; config files start from this."""
    c = ml_collections.ConfigDict()
    c.mode = "train"
    c.seed = 0                   # seeds used: seed, seed + 1, ..., seed + num_seeds - 1
    c.num_seeds = 1              # trained together in one vmapped program

    c.data = ml_collections.ConfigDict()
    c.data.source = "real"       # "real": a class-balanced subset of a real set; "distilled": a distilled set file
    c.data.dataset = "fashion_mnist"
    c.data.data_dir = ""         # "" = the dataset's default location
    c.data.per_class = 10        # real subset size per class; 0 = the whole training split
    c.data.subset_seed = 0
    c.data.distilled_path = ""   # for source="distilled"
    c.data.distilled_format = "" # "" = detect from the file
    c.data.preprocessing = "auto"  # auto: the distilled set's own recipe, "standardize" for real data
    c.data.preprocessing_path = ""  # "" = fit on data.dataset's training split (cached); else a saved fitted
                                    # transform (.npz, preprocess.Preprocessing.save), checked against the run
    c.data.label_temperature = 0.3 # soft targets softmax(y / tau) for learned label vectors
    c.data.test_split = "test"
    c.data.eval_batch_size = 500

    c.model = ml_collections.ConfigDict()
    c.model.name = "convnet"
    # Options of the network; None = the network's own default. Only options the
    # chosen network accepts may be set (see distill_jax.models.model_options).
    c.model.width = ml_collections.config_dict.placeholder(int)
    c.model.depth = ml_collections.config_dict.placeholder(int)
    c.model.norm = ml_collections.config_dict.placeholder(str)
    c.model.droppath = ml_collections.config_dict.placeholder(bool)
    c.model.improved_shortcut = ml_collections.config_dict.placeholder(bool)
    c.model.weight_init = ml_collections.config_dict.placeholder(str)
    # The convolutions' implementation (distill_jax.models.CONV_CHOICES): 'auto' is the platform's
    # fastest (oneDNN on CPU where it builds, else fast_conv's 'taps'; 'xla_per_seed' on GPU; 'xla'
    # on TPU), or $DISTILL_JAX_CONV where set. 'xla' is the only one with second derivatives.
    c.model.conv = "auto"

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 1000
    c.train.batch_size = 100
    c.train.stop_after_epochs = 0        # >0: stop there (a time slot); rerunning the same workdir resumes
    c.train.steps_per_call = 0           # steps the device runs per call: 0 = up to the next log line, evaluation
                                         # or checkpoint (distill_jax.training.multi_seed); results do not depend on it
    c.train.optimizer = "lion"
    c.train.learning_rate = 5e-5
    c.train.weight_decay = 5e-3
    c.train.compute_dtype = "float32"      # of convolutions and matmuls (distill_jax.models.COMPUTE_DTYPES);
                                           # "bfloat16": parameters, optimiser state, norms and the loss stay
                                           # float32
    c.train.lr_schedule = "warmup_cosine"  # constant | step | warmup_cosine | periodic
    c.train.warmup_fraction = 0.1          # warmup_cosine
    c.train.decay_at_fraction = 0.5        # step
    c.train.cycle_epochs = 1000            # periodic: length of one warm-up + cosine cycle
    c.train.warmup_epochs = 100            # periodic: warm-up of each cycle

    c.train.keep_rate = ml_collections.ConfigDict()
    c.train.keep_rate.enabled = False      # three-phase schedule (docs/method.md §2.4); needs model.droppath
    c.train.keep_rate.period_epochs = 500
    c.train.keep_rate.step = 0.1
    c.train.keep_rate.min = 0.5
    c.train.keep_rate.final = 0.8

    c.train.augment = ml_collections.ConfigDict()
    c.train.augment.ops = "color,crop,cutout,flip,scale,rotate"
    c.train.augment.k = 2                  # distinct DSA ops per batch; 0 = no augmentation

    c.train.kd = ml_collections.ConfigDict()
    c.train.kd.enabled = False
    c.train.kd.teacher_path = ""           # Orbax teacher directory or reference-code .pth
    c.train.kd.allow_unfinished_teacher = False  # True: accept a teacher run that stopped before its last epoch
    c.train.kd.alpha = 0.5
    c.train.kd.temperature = 1.5

    # Mode "distill" (distill_jax.distillation): produce a distilled set of data.dataset's
    # training split. Defaults are the papers' settings; configs/distill_*.py size them for a CPU.
    c.distill = ml_collections.ConfigDict()
    c.distill.method = "dm"                # "dm" (distribution matching) | "frepo"
    c.distill.ipc = 10                     # images per class
    c.distill.steps = 20000                # image updates; raising it continues a finished run
    c.distill.stop_after_steps = 0         # >0: stop there (a time slot); rerunning the same workdir resumes
    c.distill.init = "real"                # "real": random real images of each class | "noise"
    c.distill.model = "auto"               # auto: convnet (DM), convnet_frepo (FRePo)
    c.distill.width = ml_collections.config_dict.placeholder(int)   # None = the network's default
    c.distill.depth = ml_collections.config_dict.placeholder(int)
    c.distill.norm = ml_collections.config_dict.placeholder(str)
    c.distill.augment_ops = "color,crop,cutout,flip,scale,rotate"  # DSA ops (DM: both sides; FRePo: pool training)
    c.distill.augment_k = 1                # ops per draw; 0 = no augmentation
    c.distill.checkpoint_every_steps = 500 # an Orbax checkpoint and a PNG grid of the images
    c.distill.dm = ml_collections.ConfigDict()
    c.distill.dm.real_per_class = 256      # real images per class and step
    c.distill.dm.learning_rate = 1.0       # SGD on the images
    c.distill.dm.momentum = 0.5
    c.distill.frepo = ml_collections.ConfigDict()
    c.distill.frepo.real_batch_size = 1024 # real images per step (the KRR targets)
    c.distill.frepo.optimizer = "lamb"     # of images and labels: "lamb" | "adam"
    c.distill.frepo.learning_rate = 3e-4
    c.distill.frepo.pool_size = 10         # online models
    c.distill.frepo.max_online_updates = 100   # a pool model is re-initialised after this many updates
    c.distill.frepo.online_learning_rate = 3e-4  # Adam of the pool models
    c.distill.frepo.kernel_reg = 1e-6      # KRR ridge, relative to trace(K) / n
    c.distill.frepo.flip_double = ml_collections.config_dict.placeholder(bool)  # None: on at IPC 1
    c.distill.frepo.learn_labels = True

    # Mode "evaluate" (distill_jax.evaluate): test accuracy of a saved network.
    c.evaluate = ml_collections.ConfigDict()
    c.evaluate.path = ""                   # a run's workdir (all its seeds) or a reference-code .pth ConvNet

    # Mode "reproduce" (distill_jax.experiments.reproduce): every cell of a named experiment.
    c.reproduce = ml_collections.ConfigDict()
    c.reproduce.experiment = ""            # e.g. "frepo_cifar10_10_resnet18"; see
                                           # experiments.registry.experiment_names()
    c.reproduce.epoch_divisor = 1          # shorten every schedule by this factor (same phase structure)
    c.reproduce.lr_multiplier = 1.0        # scale peak learning rates (keeps lr x steps when schedules shrink)
    c.reproduce.width = 0                  # >0: width of the test networks (depth kept)
    c.reproduce.teacher_width = 0          # >0: width of the trained teachers / ConvNets
    c.reproduce.evals = 0                  # >0: evaluate this many times per run (test-set passes are costly on CPU)
    c.reproduce.split_seeds = False        # one program per seed (faster on CPU than vmapped convs)
    c.reproduce.show_best = False          # also show best-over-training accuracy, labelled as test-set selection
    c.reproduce.teacher = "auto"           # "auto": import a published teacher where one exists (MTT);
                                           # "trained": train it here
    c.reproduce.fresh_on_change = False    # True: a cell whose config changed runs afresh in <cell>.<hash>,
                                           # beside the old one
    c.reproduce.cells = ""                 # "" = every cell; else comma-separated cell names

    # Mode "transfer" (distill_jax.experiments.transfer): a pool of networks trained on one set with
    # the Baseline and the Full recipe; scale, seeds and cells as in reproduce.*, test split of data.dataset.
    c.transfer = ml_collections.ConfigDict()
    c.transfer.set_path = ""               # the distilled set: any file or folder `distill-jax inspect` reads
    c.transfer.set_format = ""             # "" = detect from the file
    c.transfer.set_source = ""             # method that made it (frepo, mtt, dc, dsa, dm, ...): "" = the set's record
    c.transfer.preprocessing = "auto"      # the set's pixel space; "auto" = what the set records
    c.transfer.networks = "convnet,resnet18,resnet50,vgg11,alexnet,vit"
    c.transfer.widths = ""                 # "name:width,..."; others take reproduce.width (ConvNet, ViT: their default)
    c.transfer.teacher = ""                # training network: "" = train it on the set; a .pth; or a run's workdir
    c.transfer.name = ""                   # the report's title ("" = the set's file name)

    c.eval_every_epochs = 50
    c.log_every_steps = 50
    c.checkpoint_every_epochs = 50
    c.keep_checkpoints = 2
    return c
