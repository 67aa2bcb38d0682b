"""Registration of the built-in families (imported by ``mtdp_ros.models``)."""

from .mtcp.config import MTCPConfig
from .registry import ModelFamily, register_family


def _build_mlore(config):
    from .mlore import MLoREModel
    return MLoREModel(config)


def _build_taskdiffusion(config):
    from .taskdiffusion import TaskDiffusionModel
    return TaskDiffusionModel(config)


register_family(ModelFamily(
    'mlore', _build_mlore,
    description='MLoRE (CVPR 2024): ViT encoder, decoder of low-rank experts'))
register_family(ModelFamily(
    'taskdiffusion', _build_taskdiffusion, diffusion=True,
    description='TaskDiffusion (ICLR 2025): ViT encoder, joint cross-task diffusion decoder'))
register_family(ModelFamily(
    'taskdiffusion_mlore', _build_taskdiffusion, diffusion=True,
    description='TaskDiffusion with MLoRE blocks in its decoder'))


def _build_mtcp(config):
    # Imported here: the model needs transformers (the ``mtcp`` extra); the config does not.
    from .mtcp.model import MTCPModel
    return MTCPModel(config)


register_family(ModelFamily(
    'mtcp', _build_mtcp, config_class=MTCPConfig, extra='mtcp',
    description='MT-CP (WACV 2025): Mask2Former backbone, task Swin decoders, CFM, trace-back'))
