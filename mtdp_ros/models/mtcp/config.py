"""MT-CP configuration: the schema of ``shared/reference`` (every constant the authors fix).

Pure Python: importing this module never imports ``transformers`` (the Mask2Former part is
kept as the plain ``Mask2FormerConfig.to_dict()`` dictionary and rebuilt when a model is
built), so the family registers without the optional dependency installed.
"""

from dataclasses import asdict, dataclass, field
import json
from typing import Dict, Optional, Tuple

from ..config import check_config_keys, check_input_fields, IMAGENET_MEAN, IMAGENET_STD
from ..tasks import get_task, select_tasks

# The authors' two multi-task classes, their tasks (in order) and which module names hold
# each task's blocks. The module names are the authors' (their checkpoints load strictly).
LAYOUTS = {
    'NYUD': {
        'model_class': 'MultiTaskModel_NYUD',
        'tasks': ('semseg', 'depth', 'normals'),
        'fpn': ('fpn_semseg', 'fpn_depth', 'fpn_normal'),
        'head': ('project_semseg', 'project_depth', 'project_normals'),
        # Deep-supervision output keys, (coarse 1/16, 1/8) per task, as the authors name them.
        'aux_keys': (('alpha_semseg_4', 'alpha_semseg_2'), ('beta_depth_8', 'beta_depth_4'),
                     ('charlie_depth_8', 'charlie_depth_4')),
        # Per task: does the pred layer carry the authors' extra bias-free 1x1 conv?
        'double_pred': (True, True, True),
        # NYUD carries loss-weighting parameters its forward never uses.
        'unused_scalars': True,
    },
    'PASCALContext': {
        'model_class': 'MultiTaskModel_PASCAL',
        'tasks': ('semseg', 'human_parts', 'sal'),
        'fpn': ('fpn_semseg', 'fpn_human', 'fpn_normal'),
        'head': ('project_semseg', 'project_human', 'project_sal'),
        'aux_keys': (('alpha_semseg_4', 'alpha_semseg_2'), ('beta_human_8', 'beta_human_4'),
                     ('charlie_sal_8', 'charlie_sal_4')),
        'double_pred': (True, False, False),
        'unused_scalars': False,
    },
}
# The task decoders and trace-back modules are numbered 1, 2, 3 in task order.
PRED_LAYERS = ('sem_pred_layers', 'depth_pred_layers', 'normals_pred_layers')
UNUSED_BACKBONE_KEYS = ('pretrain_img_size', 'patch_size', 'in_chans', 'embed_dim', 'depths',
                        'num_heads', 'window_size', 'drop_path_rate', 'out_indices')
# The input must divide into the Swin backbone's 1/32 map.
INPUT_MULTIPLE = 32


@dataclass(frozen=True)
class MTCPConfig:
    """Architecture of MT-CP (WACV 2025) as the authors' code builds it.

    Field names are the reference schema's (``shared/reference/README.md``, "MT-CP config
    schema"); ``train_focal_px`` and ``name`` are this project's, as in ``ModelConfig``.
    """

    family: str
    dataset: str
    model_class: str
    tasks: Tuple[str, ...]
    num_outputs: Dict[str, int]
    image_size: Tuple[int, int]
    C: int
    size_list: Tuple[int, ...]
    dec_window: int
    dec_depths: Tuple[int, ...]
    dec_heads: Tuple[int, ...]
    dec_embed_dim: int
    dec_in_chans: int
    dec_mlp_ratio: float
    dec_patch_size: int
    dec_pretrain_img_size: int
    dec_out_indices: Tuple[int, ...]
    dec_drop_path_rate: float
    dec_ape: bool
    trace_back_spf: Tuple[Tuple[int, int], ...]
    spf_out: int
    gaaf_gate: int
    gaaf_conv: int
    cbam_reduction: int
    cbam_spatial_kernel: int
    cbam_bn_momentum: float
    intermediate_predictions: int
    depth_hidden: Optional[int]
    head_upsample: Dict[str, int]
    unused_backbone: dict
    input_backbone_channels: int
    mask2former_class: str
    mask2former: dict
    transformers_version: str = ''
    torch_version: str = ''
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    train_focal_px: Optional[float] = None
    name: str = field(default='', compare=False)

    def __post_init__(self):
        for key in ('tasks', 'image_size', 'size_list', 'dec_depths', 'dec_heads',
                    'dec_out_indices', 'mean', 'std'):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, key, tuple(value))
        spf = getattr(self, 'trace_back_spf')
        if isinstance(spf, (list, tuple)):
            object.__setattr__(self, 'trace_back_spf',
                               tuple(tuple(p) if isinstance(p, (list, tuple)) else p
                                     for p in spf))
        for key in ('num_outputs', 'head_upsample', 'unused_backbone', 'mask2former'):
            value = getattr(self, key)
            if isinstance(value, dict):
                # JSON form (e.g. id2label's int keys become strings, as config.json has
                # them): a config compares equal after a trip through a checkpoint's metadata.
                object.__setattr__(self, key, _plain(value))
        self.validate()

    # ------------------------------------------------------------------ runtime interface
    @property
    def is_diffusion(self) -> bool:
        """MT-CP has no sampler."""
        return False

    @property
    def trained_steps(self):
        """No denoising steps (None, as for MLoRE)."""
        return None

    @property
    def has_mlore(self) -> bool:
        """MT-CP has no MLoRE blocks (nothing to fuse)."""
        return False

    @property
    def layout(self) -> dict:
        """Module names and output keys of the authors' class for this dataset."""
        return LAYOUTS[self.dataset]

    @property
    def aux_keys(self) -> Tuple[str, ...]:
        """Keys of the six deep-supervision predictions ``model(x)`` also returns."""
        return tuple(k for pair in self.layout['aux_keys'] for k in pair)

    def is_class_task(self, task: str) -> bool:
        """Whether ``task``'s targets are class ids (see the task table).

        MT-CP's saliency head has one logit (``255 * sigmoid`` in the authors' evaluation);
        its targets are still the classes 0/1.
        """
        return get_task(task).is_class_task

    def select_tasks(self, tasks=None):
        """Validated tuple of requested tasks in the model's order (None: all)."""
        return select_tasks(self.tasks, tasks)

    # ------------------------------------------------------------------ validation
    def validate(self):
        """Raise ValueError naming the first inconsistent field."""
        def fail(message):
            raise ValueError(f'invalid MT-CP config{" " + self.name if self.name else ""}: '
                             f'{message}')

        if self.family != 'mtcp':
            fail(f'family {self.family!r} must be "mtcp"')
        if self.dataset not in LAYOUTS:
            fail(f'dataset {self.dataset!r} is not one of {tuple(LAYOUTS)}')
        layout = LAYOUTS[self.dataset]
        if self.model_class != layout['model_class']:
            fail(f'model_class {self.model_class!r}: {self.dataset} uses '
                 f'{layout["model_class"]!r}')
        if self.tasks != layout['tasks']:
            fail(f'tasks {list(self.tasks)} must be {list(layout["tasks"])} (the authors\' '
                 f'{self.model_class} couples exactly these three)')
        for task in self.tasks:
            if not isinstance(self.num_outputs.get(task), int) or self.num_outputs[task] < 1:
                fail(f'num_outputs[{task!r}] must be a positive integer')
        if set(self.num_outputs) != set(self.tasks):
            fail(f'num_outputs keys {sorted(self.num_outputs)} differ from tasks')
        if len(self.image_size) != 2 or min(self.image_size) < 1 \
                or any(s % INPUT_MULTIPLE for s in self.image_size):
            fail(f'image_size {list(self.image_size)} must be two positive multiples of '
                 f'{INPUT_MULTIPLE}')
        c = self.C
        if not isinstance(c, int) or c < 1:
            fail(f'C {c!r} must be a positive integer')
        if self.size_list != (c, 2 * c, 4 * c):
            fail(f'size_list {list(self.size_list)} must be [C, 2C, 4C] = {[c, 2 * c, 4 * c]}')
        if self.dec_embed_dim != c or self.dec_in_chans != c:
            fail('dec_embed_dim and dec_in_chans must equal C (the decoders take the shared '
                 'map without patch embedding)')
        if len(self.dec_depths) != 3 or len(self.dec_heads) != 3 or min(self.dec_depths) < 1:
            fail('dec_depths and dec_heads need three positive entries (three stages)')
        for stage, heads in enumerate(self.dec_heads):
            if heads < 1 or (c << stage) % heads:
                fail(f'dec_heads[{stage}] = {heads} must divide the stage width {c << stage}')
        if self.dec_out_indices != (0, 1, 2):
            fail('dec_out_indices must be [0, 1, 2] (the FPN reads all three stages)')
        if self.dec_ape:
            fail('dec_ape (absolute position embedding) is not part of MT-CP')
        if self.dec_window < 2 or self.dec_mlp_ratio <= 0 or self.dec_patch_size < 1:
            fail('dec_window must be >= 2, dec_mlp_ratio positive, dec_patch_size >= 1')
        if not 0 <= self.dec_drop_path_rate < 1:
            fail('dec_drop_path_rate must lie in [0, 1)')
        spf = self.trace_back_spf
        expected = ((c, 4 * c), (4 * c, 2 * c), (2 * c, c), (2 * c, c))
        if spf != expected:
            fail(f'trace_back_spf {[list(p) for p in spf]} must be '
                 f'{[list(p) for p in expected]} (slot 4 aliases slot 3)')
        if self.spf_out != c or self.gaaf_gate != c or self.gaaf_conv != 2 * c:
            fail('spf_out and gaaf_gate must equal C, gaaf_conv 2C (the auxiliary input is '
                 'split at C)')
        if self.cbam_reduction < 1 or c // self.cbam_reduction < 1:
            fail(f'cbam_reduction {self.cbam_reduction} must be in 1..C')
        if self.cbam_spatial_kernel < 1 or self.cbam_spatial_kernel % 2 == 0:
            fail('cbam_spatial_kernel must be a positive odd integer')
        if not 0 < self.cbam_bn_momentum <= 1:
            fail('cbam_bn_momentum must lie in (0, 1]')
        if self.intermediate_predictions != 2:
            fail('intermediate_predictions must be 2 (the authors\' forward reads two)')
        if self.dataset == 'NYUD':
            if not isinstance(self.depth_hidden, int) or self.depth_hidden < 1:
                fail('depth_hidden must be a positive integer for NYUD')
        elif self.depth_hidden is not None:
            fail('depth_hidden is NYUD only (null for PASCALContext)')
        if set(self.head_upsample) != set(self.tasks) or any(
                not isinstance(v, int) or v < 1 for v in self.head_upsample.values()):
            fail(f'head_upsample needs a positive integer factor per task, got '
                 f'{self.head_upsample}')
        unknown = sorted(set(self.unused_backbone) - set(UNUSED_BACKBONE_KEYS))
        if unknown:
            fail(f'unused_backbone has unknown keys {unknown}')
        _check_mask2former(self.mask2former, c, fail)
        check_input_fields(self, fail)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data) -> 'MTCPConfig':
        """Build from the reference dictionary; unknown keys are an error."""
        if isinstance(data, MTCPConfig):
            return data
        if not isinstance(data, dict):
            raise ValueError(f'model config must be a mapping, got {type(data).__name__}')
        check_config_keys(cls, data, 'MT-CP config')
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f'invalid MT-CP config: {exc}') from None

    def to_dict(self) -> dict:
        """Plain dictionary (lists, not tuples) in the reference schema."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        return out

    def replace(self, **changes) -> 'MTCPConfig':
        """A copy with some fields changed (validated again)."""
        data = self.to_dict()
        data.update(changes)
        return MTCPConfig.from_dict(data)


def _check_mask2former(m2f, c, fail):
    if not isinstance(m2f, dict) or not isinstance(m2f.get('backbone_config'), dict):
        fail('mask2former must be Mask2FormerConfig.to_dict() with a backbone_config')
    if m2f.get('mask_feature_size', 256) != c:
        fail(f'mask2former mask_feature_size {m2f.get("mask_feature_size", 256)} must equal '
             f'C {c} (the mask features are the shared representation)')
    if m2f.get('hidden_dim', 256) != m2f.get('feature_size', 256):
        # Otherwise transformers keeps its query input projections in a plain list:
        # random, unregistered and in no state dict.
        fail('mask2former hidden_dim must equal feature_size')
    if m2f['backbone_config'].get('model_type', 'swin') != 'swin':
        fail('mask2former backbone_config must be a Swin (model_type "swin")')


def _plain(value):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        raise ValueError(f'MT-CP config holds a value JSON cannot store: {value!r}') from None
