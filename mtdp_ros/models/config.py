"""Model configuration: one dataclass for every family, validated on construction.

The dictionary form uses the schema of ``shared/reference/README.md`` (the authors' reference
vectors), so a configuration written by the reference tooling loads unchanged.
"""

from dataclasses import asdict, dataclass, field, fields, MISSING
import math
from typing import Dict, Optional, Tuple

from . import tasks as _tasks

# The families with MLoRE blocks in this configuration's schema (the others are registered
# in mtdp_ros.models.registry; MLoRE fields are validated for these).
MLORE_FAMILIES = ('mlore', 'taskdiffusion_mlore')
DATASETS = ('NYUD', 'PASCALContext')
# The task table (mtdp_ros.models.tasks) defines the tasks and their order (the authors').
TASK_ORDER = _tasks.TASK_ORDER
# Built-in tasks whose raw output is class logits (argmax gives the label).
CLASS_TASKS = tuple(spec.name for spec in _tasks.BUILT_IN_TASKS if spec.is_class_task)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The decoder always reads four levels: three tapped transformer blocks and the final output.
NUM_LEVELS = 4


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one multi-task dense predictor (MLoRE, TaskDiffusion or both)."""

    family: str
    tasks: Tuple[str, ...]
    num_outputs: Dict[str, int]
    image_size: Tuple[int, int]
    embed_dim: int
    depth: int
    num_heads: int
    select_layers: Tuple[int, ...]
    decoder_dim: int
    dataset: str = 'NYUD'
    patch_size: int = 16
    mlp_ratio: float = 4.0
    # MLoRE blocks (family 'mlore' and 'taskdiffusion_mlore').
    expert_ranks: Optional[Tuple[int, ...]] = None
    task_expert_rank: Optional[int] = None
    top_k: Optional[int] = None
    pre_softmax: Optional[bool] = None
    head: str = 'conv'
    # TaskDiffusion decoder and sampler.
    trained_steps: Optional[int] = None
    time_difference: float = 1.0
    scale: float = 0.01
    module_layers: int = 3
    with_aux: bool = True
    # The authors' ViT-B MLoRE carries modules it never calls (q_fuse, classify_route_*);
    # a published checkpoint has their weights, so the model must have them to load strictly.
    vitb_unused_modules: bool = False
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    # Focal length (px) of the camera the depth head was trained on, measured in the model's
    # input pixels as trained (after the training pipeline's resize/crop/pad). Metric depth
    # learned from apparent size holds for this focal length only; the runtime rescales it
    # to the camera's (see mtdp_ros.runtime.postprocess.focal_correction_factor). None: not
    # known (configs of the reference schema) or no depth head: no correction. Kept (and
    # unused) when a task subset without depth is derived from a depth model.
    train_focal_px: Optional[float] = None
    name: str = field(default='', compare=False)

    def __post_init__(self):
        # Normalise sequences to tuples so configs hash, compare and serialise the same way.
        for key in ('tasks', 'image_size', 'select_layers', 'expert_ranks', 'mean', 'std'):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, key, tuple(value))
        object.__setattr__(self, 'num_outputs', dict(self.num_outputs))
        self.validate()

    # ------------------------------------------------------------------ derived facts
    @property
    def is_diffusion(self) -> bool:
        """True for the TaskDiffusion families (a sampler with a step count)."""
        from .registry import get_family
        return get_family(self.family).diffusion

    @property
    def has_mlore(self) -> bool:
        """True where MLoRE blocks exist (and ``reparameterize`` fuses them)."""
        return self.family in MLORE_FAMILIES

    @property
    def grid_size(self) -> Tuple[int, int]:
        """Token grid of the ViT (input size over patch size)."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_experts(self) -> int:
        return len(self.expert_ranks or ())

    @property
    def label_dim(self) -> int:
        """Channels of one task's label embedding in TaskDiffusion's cross-task encoder."""
        return self.decoder_dim // 4

    @property
    def noise_channels(self) -> int:
        """Channels of the cross-task map the sampler denoises (the initial noise's C)."""
        # Saliency keeps its own embedding beside the fused map (the authors' PASCAL layout).
        separate = [t for t in self.tasks if _tasks.get_task(t).separate_label_embedding]
        return self.decoder_dim + self.label_dim * len(separate)

    def is_class_task(self, task: str) -> bool:
        """Whether ``task``'s raw output is class logits (see the task table)."""
        return _tasks.get_task(task).is_class_task

    def select_tasks(self, tasks=None):
        """Validated tuple of requested tasks in the model's order (None: all)."""
        return _tasks.select_tasks(self.tasks, tasks)

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Raise ValueError naming the first inconsistent field."""
        def fail(message):
            raise ValueError(f'invalid model config{" " + self.name if self.name else ""}: '
                             f'{message}')

        from .registry import family_names, get_family
        if self.family not in family_names():
            fail(f'family {self.family!r} is not one of {family_names()}')
        config_class = get_family(self.family).config_class
        if config_class not in (None, ModelConfig):
            fail(f'family {self.family!r} uses {config_class.__name__}, not ModelConfig')
        if self.dataset not in DATASETS:
            fail(f'dataset {self.dataset!r} is not one of {DATASETS}')
        if not self.tasks:
            fail('tasks is empty')
        order = _tasks.task_names()
        unknown = [t for t in self.tasks if t not in order]
        if unknown:
            fail(f'unknown tasks {unknown}; known: {order}')
        if len(set(self.tasks)) != len(self.tasks):
            fail(f'tasks {self.tasks} has duplicates')
        if list(self.tasks) != sorted(self.tasks, key=order.index):
            fail(f'tasks {self.tasks} must follow the order {order}')
        missing = [t for t in self.tasks if t not in self.num_outputs]
        if missing:
            fail(f'num_outputs lacks {missing}')
        for task in self.tasks:
            if int(self.num_outputs[task]) < 1:
                fail(f'num_outputs[{task!r}] must be >= 1')
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            fail(f'image_size {self.image_size} must be two positive integers [H, W]')
        if self.patch_size < 1 or any(s % self.patch_size for s in self.image_size):
            fail(f'image_size {self.image_size} must be a multiple of patch_size '
                 f'{self.patch_size}')
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            fail(f'embed_dim {self.embed_dim} must be a positive multiple of num_heads '
                 f'{self.num_heads}')
        if len(self.select_layers) != NUM_LEVELS - 1:
            fail(f'select_layers needs {NUM_LEVELS - 1} entries, got {self.select_layers}')
        if any(not 1 <= s <= self.depth for s in self.select_layers):
            fail(f'select_layers {self.select_layers} must lie in 1..depth ({self.depth})')
        if list(self.select_layers) != sorted(set(self.select_layers)):
            fail(f'select_layers {self.select_layers} must be strictly increasing')
        if self.decoder_dim < 4 or self.decoder_dim % 4:
            fail(f'decoder_dim {self.decoder_dim} must be a positive multiple of 4')
        if self.has_mlore:
            if not self.expert_ranks or any(r < 1 for r in self.expert_ranks):
                fail('expert_ranks must be a non-empty list of positive ranks')
            if not self.task_expert_rank or self.task_expert_rank < 1:
                fail('task_expert_rank must be a positive integer')
            if self.top_k is None or not 1 <= self.top_k <= len(self.expert_ranks):
                fail(f'top_k {self.top_k} must lie in 1..{len(self.expert_ranks)}')
            if self.pre_softmax is None:
                fail('pre_softmax must be true or false for MLoRE families')
        if self.family == 'mlore' and self.head != 'conv':
            fail(f'head {self.head!r}: only the authors\' "conv" head is implemented')
        if self.is_diffusion:
            if self.trained_steps is None or self.trained_steps < 1:
                fail('trained_steps must be a positive integer for TaskDiffusion families')
            if self.module_layers < 1:
                fail('module_layers must be >= 1')
            if not self.scale > 0:
                fail('scale must be positive')
            if self.time_difference < 0:
                fail('time_difference must be >= 0')
        check_input_fields(self, fail)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data) -> 'ModelConfig':
        """Build from the reference schema; unknown keys are an error (typos do not pass).

        A config object of a registered family's own class (see ``ModelFamily.config_class``)
        is returned as it is, as a ModelConfig is.
        """
        if isinstance(data, ModelConfig):
            return data
        from .registry import get_family
        if not isinstance(data, dict):
            family = getattr(data, 'family', None)
            config_class = get_family(family).config_class if isinstance(family, str) else None
            if config_class is not None and isinstance(data, config_class):
                return data
            raise ValueError(f'model config must be a mapping, got {type(data).__name__}')
        if cls is ModelConfig and 'family' in data:
            # A family with a schema of its own (e.g. MT-CP) parses its dictionaries itself.
            config_class = get_family(data['family']).config_class
            if config_class not in (None, ModelConfig):
                return config_class.from_dict(data)
        check_config_keys(cls, data, 'model config')
        # The reference schema writes None for fields a family does not use: keep defaults.
        values = {k: v for k, v in data.items() if v is not None or _default_is_none(k)}
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f'invalid model config: {exc}') from None

    def to_dict(self) -> dict:
        """Plain dictionary (lists, not tuples) in the reference schema."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def replace(self, **changes) -> 'ModelConfig':
        """A copy with some fields changed (validated again)."""
        data = self.to_dict()
        data.update(changes)
        return ModelConfig.from_dict(data)


def check_config_keys(cls, data, label):
    """Raise ValueError naming keys of ``data`` unknown to dataclass ``cls``, or missing."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f'unknown {label} keys {unknown}; known: {sorted(known)}')
    missing = [f.name for f in fields(cls)
               if f.default is MISSING and f.default_factory is MISSING and f.name not in data]
    if missing:
        raise ValueError(f'{label} lacks required keys {missing}')


def check_input_fields(config, fail):
    """The fields every family's config shares: ``mean``, ``std``, ``train_focal_px``."""
    if len(config.mean) != 3 or len(config.std) != 3 or min(config.std) <= 0:
        fail('mean and std need three values each, std positive')
    if config.train_focal_px is not None:
        focal = config.train_focal_px
        if isinstance(focal, bool) or not isinstance(focal, (int, float)) \
                or not math.isfinite(focal) or focal <= 0:
            fail(f'train_focal_px must be a positive number of pixels, got {focal!r}')


def _default_is_none(key):
    for f in fields(ModelConfig):
        if f.name == key:
            return f.default is None
    return False
