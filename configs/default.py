"""Default configuration: every field any run may set lives here.

Other config files start from `get_config()` of this module and override fields;
`distill_jax.config.validate` rejects fields that are not defined here.
The defaults train a ConvNet on a 10-images-per-class subset of Fashion-MNIST
(Debian's `dataset-fashion-mnist`), which runs offline in a few minutes on a CPU.
"""
import ml_collections


def get_config():
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

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 1000
    c.train.batch_size = 100
    c.train.stop_after_epochs = 0        # >0: stop there (a time slot); rerunning the same workdir resumes
    c.train.optimizer = "lion"
    c.train.learning_rate = 5e-5
    c.train.weight_decay = 5e-3
    c.train.lr_schedule = "warmup_cosine"  # constant | step | warmup_cosine | periodic
    c.train.warmup_fraction = 0.1          # warmup_cosine
    c.train.decay_at_fraction = 0.5        # step
    c.train.cycle_epochs = 1000            # periodic: length of one warm-up + cosine cycle
    c.train.warmup_epochs = 100            # periodic: warm-up of each cycle

    c.train.keep_rate = ml_collections.ConfigDict()
    c.train.keep_rate.enabled = False      # three-phase schedule (SPEC 2.4); needs model.droppath
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
    c.train.kd.teacher_model = "convnet"
    c.train.kd.alpha = 0.5
    c.train.kd.temperature = 1.5

    c.eval_every_epochs = 50
    c.log_every_steps = 50
    c.checkpoint_every_epochs = 50
    c.keep_checkpoints = 2
    return c
