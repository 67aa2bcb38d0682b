"""The task table: what each output task of the models is, in one place.

Every consumer that treats tasks differently reads a task's :class:`TaskSpec` here instead
of testing its name: the model configuration (known tasks and their order), the label
encoder of TaskDiffusion, the runtime's post-processing, the node's output topics and
colour pictures (also ``mtdp infer`` and the demo), the RViz topic list, the training
losses, the meters and the evaluation summary, and the training data's target format.

Adding a task of an existing kind is one :class:`TaskSpec` (in ``BUILT_IN_TASKS``, or
:func:`register_task` at run time); its head is built from the config's ``num_outputs``.
Its data (a dataset reader for its labels, a preset's ``num_outputs``) and an RViz display
are the only other places. A new ``kind`` or ``activation`` also needs handling where kinds
are dispatched (search for ``.kind ==`` / ``.activation ==``). What still names a task
is about that task alone: the point cloud and ``depth/camera_info`` come from ``depth``,
the semantic cloud colours and fine-tuning's distillation from ``semseg``, the data set
readers and synthetic scenes from the tasks they have labels for.
"""

from dataclasses import dataclass
from typing import Dict, Tuple

# What the post-processed output is (decides post-processing, colour map and encoding):
# labels: class ids H x W (argmax); depth: metres H x W (NaN invalid); normals: unit vectors
# H x W x 3 (NaN invalid); probability: [0, 1] H x W.
KINDS = ('labels', 'depth', 'normals', 'probability')
# How raw outputs become the kind's values: argmax over class logits; none (the raw value,
# metres); l2_normalize over the channels; sigmoid of channel 0; softmax over the
# channels, probability of class 1.
ACTIVATIONS = {'labels': ('argmax',), 'depth': ('none',), 'normals': ('l2_normalize',),
               'probability': ('sigmoid', 'softmax')}
# Training targets: classes (int64 1 x H x W, 255 ignored), scalar (float32 1 x H x W),
# vector (float32 3 x H x W, the zero vector invalid).
TARGETS = ('classes', 'scalar', 'vector')
# Loss kinds (mtdp_ros.training.losses) and meter kinds (mtdp_ros.training.metrics).
LOSSES = ('cross_entropy', 'balanced_cross_entropy', 'depth_l1', 'normals_l1', 'edge_bce')
METERS = ('miou', 'maxf', 'depth', 'normals', 'edge')


@dataclass(frozen=True)
class TaskSpec:
    """One output task: its outputs, topics, training target, loss and metrics."""

    name: str
    kind: str
    activation: str
    # Topics: ``<stem>/labels`` (labels), ``<stem>/image`` (depth, beside its camera_info)
    # or ``<stem>`` (the others), and ``<stem>/color``.
    topic_stem: str
    # Position among the colour pictures (RViz displays, demo overview): smaller first.
    display_rank: int
    target: str
    # Value of padded / ignored target pixels in the data pipeline.
    target_fill: float
    loss: str
    loss_weight: float
    meter: str
    # Metrics kept in the evaluation summary; the first is the task's one metric in the
    # multi-task gain Delta_m. Direction of each metric a meter reports: see metrics.py.
    summary_metrics: Tuple[str, ...]
    # TaskDiffusion's label encoder: the embedding stays beside the fused map (the authors'
    # PASCAL saliency) instead of entering the fusing convolution.
    separate_label_embedding: bool = False

    def __post_init__(self):
        def fail(message):
            raise ValueError(f'task {self.name!r}: {message}')

        if not self.name or not isinstance(self.name, str):
            raise ValueError(f'a task needs a name, got {self.name!r}')
        if self.kind not in KINDS:
            fail(f'kind {self.kind!r} is not one of {KINDS}')
        if self.activation not in ACTIVATIONS[self.kind]:
            fail(f'activation {self.activation!r} does not suit kind {self.kind!r} '
                 f'({ACTIVATIONS[self.kind]})')
        if not self.topic_stem or self.topic_stem.startswith('/'):
            fail(f'topic_stem {self.topic_stem!r} must be a non-empty relative name')
        if self.target not in TARGETS:
            fail(f'target {self.target!r} is not one of {TARGETS}')
        if self.loss not in LOSSES:
            fail(f'loss {self.loss!r} is not one of {LOSSES}')
        if self.meter not in METERS:
            fail(f'meter {self.meter!r} is not one of {METERS}')
        if not self.summary_metrics:
            fail('summary_metrics is empty')
        object.__setattr__(self, 'summary_metrics', tuple(self.summary_metrics))

    @property
    def raw_topic(self) -> str:
        """Relative topic of the raw output (labels, metres, vectors, probabilities).

        Depth is ``<stem>/image`` beside ``<stem>/camera_info``: the pair an
        image_transport CameraSubscriber looks for (it was ``<stem>`` before).
        """
        if self.kind == 'labels':
            return f'{self.topic_stem}/labels'
        return f'{self.topic_stem}/image' if self.kind == 'depth' else self.topic_stem

    @property
    def color_topic(self) -> str:
        """Relative topic of the rgb8 picture of the output."""
        return f'{self.topic_stem}/color'

    @property
    def primary_metric(self) -> str:
        """The task's one metric in the multi-task gain."""
        return self.summary_metrics[0]

    @property
    def is_class_task(self) -> bool:
        """Whether the raw output is class logits and the target class ids."""
        return self.target == 'classes'


IGNORE = 255.0
# The authors' task order (their code lists every model's tasks in it). Loss weights: the
# authors' NYUD settings (MLoRE YAML).
BUILT_IN_TASKS = (
    TaskSpec('semseg', 'labels', 'argmax', 'semantic', 0, 'classes', IGNORE,
             'cross_entropy', 1.0, 'miou', ('mIoU', 'mIoU_all', 'pixel_acc')),
    TaskSpec('depth', 'depth', 'none', 'depth', 1, 'scalar', 0.0,
             'depth_l1', 1.0, 'depth', ('rmse', 'abs_rel', 'log_rmse', 'delta1')),
    TaskSpec('human_parts', 'labels', 'argmax', 'human_parts', 4, 'classes', IGNORE,
             'cross_entropy', 2.0, 'miou', ('mIoU',)),
    TaskSpec('sal', 'probability', 'softmax', 'saliency', 5, 'classes', IGNORE,
             'balanced_cross_entropy', 5.0, 'maxf', ('maxF',),
             separate_label_embedding=True),
    TaskSpec('normals', 'normals', 'l2_normalize', 'normals', 2, 'vector', 0.0,
             'normals_l1', 10.0, 'normals',
             ('mean_angle', 'median_angle', 'within_11.25', 'within_22.5', 'within_30')),
    TaskSpec('edge', 'probability', 'sigmoid', 'edges', 3, 'scalar', IGNORE,
             'edge_bce', 50.0, 'edge', ('odsF', 'threshold', 'precision', 'recall')),
)
_TASKS: Dict[str, TaskSpec] = {spec.name: spec for spec in BUILT_IN_TASKS}
# The built-in tasks in the authors' order (task_names() includes registered ones).
TASK_ORDER = tuple(_TASKS)


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task after the known ones; ValueError if its name or topics are taken."""
    if not isinstance(spec, TaskSpec):
        raise ValueError(f'register_task takes a TaskSpec, got {type(spec).__name__}')
    if spec.name in _TASKS:
        raise ValueError(f'task {spec.name!r} is already registered')
    taken = {topic for known in _TASKS.values()
             for topic in (known.raw_topic, known.color_topic)}
    clash = sorted({spec.raw_topic, spec.color_topic} & taken)
    if clash:
        raise ValueError(f'task {spec.name!r}: topics {clash} belong to another task')
    _TASKS[spec.name] = spec
    return spec


def task_names() -> Tuple[str, ...]:
    """Every known task, in the order models list their tasks."""
    return tuple(_TASKS)


def get_task(name) -> TaskSpec:
    """The spec of task ``name``; ValueError naming the known tasks otherwise."""
    try:
        return _TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f'unknown task {name!r}; known: {list(_TASKS)}') from None


def find_task(name):
    """The spec of task ``name``, or None when no such task exists."""
    return _TASKS.get(name) if isinstance(name, str) else None


def select_tasks(model_tasks, tasks=None) -> Tuple[str, ...]:
    """Validated tuple of ``tasks`` requested of a model with ``model_tasks`` (None: all).

    In the model's order; a single name may be given as a string. ValueError naming unknown
    tasks or an empty request.
    """
    model_tasks = tuple(model_tasks)
    if tasks is None:
        return model_tasks
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    unknown = [t for t in tasks if t not in model_tasks]
    if unknown:
        raise ValueError(f'unknown tasks {unknown}; this model has {list(model_tasks)}')
    if not tasks:
        raise ValueError('at least one task must be requested')
    return tuple(t for t in model_tasks if t in tasks)


def display_order(names=None) -> Tuple[str, ...]:
    """``names`` (default: every task) sorted for display (RViz, demo pictures)."""
    names = task_names() if names is None else tuple(names)
    return tuple(sorted(names, key=lambda name: (get_task(name).display_rank,
                                                 task_names().index(name))))


def color_topics() -> Tuple[str, ...]:
    """The colour topic of every task, in display order."""
    return tuple(get_task(name).color_topic for name in display_order())


__all__ = ['BUILT_IN_TASKS', 'KINDS', 'TASK_ORDER', 'TaskSpec', 'color_topics',
           'display_order', 'find_task', 'get_task', 'register_task', 'task_names']
